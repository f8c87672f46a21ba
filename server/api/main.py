"""Mounts the routers under ``/api/v1`` with their body-size limits and error shapes."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from server.api.routes import agent, audit, devices, enroll, login, users
from server.config import ServerSettings

API_PREFIX = "/api/v1"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # The offending input is not echoed back: it may be large or carry a password.
    detail = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


def include_api(app: FastAPI, settings: ServerSettings) -> None:
    """Add every API router to ``app``; agent endpoints accept larger bodies than the rest."""
    app.include_router(enroll.router, prefix=API_PREFIX)
    app.include_router(agent.router, prefix=API_PREFIX, max_body_size=settings.max_agent_body_bytes)
    app.include_router(login.router, prefix=API_PREFIX)
    app.include_router(users.router, prefix=API_PREFIX)
    app.include_router(devices.router, prefix=API_PREFIX)
    app.include_router(audit.router, prefix=API_PREFIX)
    app.add_exception_handler(RequestValidationError, _validation_error)
