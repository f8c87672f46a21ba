"""``create_app(settings)``: the ASGI application used by uvicorn and by the tests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from sqlalchemy import Engine
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from server.api.main import API_PREFIX, include_api
from server.clock import Clock, utc_now
from server.config import ServerSettings
from server.db import make_engine, make_sessionmaker
from server.web import include_dashboard, users_pages

log = logging.getLogger(__name__)


def _server_version() -> str:
    try:
        return version("telemaint")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(settings: ServerSettings, *, clock: Clock = utc_now, engine: Engine | None = None) -> FastAPI:
    """Return the application for ``settings``; ``clock`` is injectable for tests.

    The settings must carry a secret key (see :func:`server.config.read_secret_key`); the
    database schema must be current (``telemaint-server init``). ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` are believed only from ``settings.trusted_proxies`` (the client is the
    rightmost forwarded address that is not itself a trusted proxy). Raises ValueError without
    a secret key.
    """
    if settings.secret_key is None:
        raise ValueError("the settings carry no secret key; run `telemaint-server init`")
    engine = engine or make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="telemaint server",
        version=_server_version(),
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        max_body_size=settings.max_body_bytes,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.clock = clock
    include_api(app, settings)
    include_dashboard(app)
    app.include_router(users_pages.router)
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))
    return app
