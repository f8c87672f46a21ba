"""Mounts the routers under ``/api/v1`` with their body-size limits and error shapes."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from server.api.routes import agent, audit, devices, enroll, login, users
from server.config import ServerSettings

API_PREFIX = "/api/v1"

log = logging.getLogger(__name__)

# Answers any operation may give for reasons outside its own code, added to the OpenAPI of every
# operation that can give them (a documented status is one a client must be ready for).
_ERROR_SCHEMA_NAME = "Error"
_ERROR_SCHEMA: dict[str, Any] = {
    "title": _ERROR_SCHEMA_NAME,
    "type": "object",
    "properties": {"detail": {"title": "Detail", "description": "what was wrong, for a person"}},
    "required": ["detail"],
}
_BODY_ERRORS = {
    "400": "the body is not JSON, or is nested too deeply",
    "413": "the body is larger than the server accepts",
    "422": "the body or a parameter does not match the schema",
}
_AUTH_ERRORS = {"401": "no credentials, or unknown, revoked or expired ones"}
_ANY_ERRORS = {"503": "the database is busy or unreachable; retry after Retry-After seconds"}
BUSY_RETRY_AFTER_S = 5


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # The offending input is not echoed back: it may be large or carry a password.
    detail = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


async def _database_busy(request: Request, exc: Exception) -> JSONResponse:
    """Answer 503 with ``Retry-After`` when no database connection could be had in time (every
    one is taken by requests waiting on the database) or the database refused or lost one."""
    log.warning("%s %s: database busy or unreachable: %s", request.method, request.url.path, str(exc).splitlines()[0])
    return JSONResponse(
        status_code=503,
        content={"detail": "the server is busy; retry shortly"},
        headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
    )


def _error_response(description: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{_ERROR_SCHEMA_NAME}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document_common_errors(openapi: dict[str, Any]) -> dict[str, Any]:
    """Return ``openapi`` with the answers every operation may give listed where they apply:
    400, 413 and 422 where it takes a body, 401 where it needs credentials, 503 everywhere."""
    openapi.setdefault("components", {}).setdefault("schemas", {})[_ERROR_SCHEMA_NAME] = _ERROR_SCHEMA
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            extra: dict[str, str] = dict(_ANY_ERRORS)
            if "requestBody" in operation:
                extra.update(_BODY_ERRORS)
            if operation.get("security"):
                extra.update(_AUTH_ERRORS)
            for status_code, description in extra.items():
                operation["responses"].setdefault(status_code, _error_response(description))
    return openapi


def _install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_common_errors(
                get_openapi(title=app.title, version=app.version, routes=app.routes)
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def include_api(app: FastAPI, settings: ServerSettings) -> None:
    """Add every API router to ``app``; agent endpoints accept larger bodies than the rest."""
    app.include_router(enroll.router, prefix=API_PREFIX)
    app.include_router(agent.router, prefix=API_PREFIX, max_body_size=settings.max_agent_body_bytes)
    app.include_router(login.router, prefix=API_PREFIX)
    app.include_router(users.router, prefix=API_PREFIX)
    app.include_router(users.admin_router, prefix=API_PREFIX)  # after /users/me
    app.include_router(devices.router, prefix=API_PREFIX)
    app.include_router(audit.router, prefix=API_PREFIX)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PoolTimeoutError, _database_busy)
    app.add_exception_handler(OperationalError, _database_busy)
    _install_openapi(app)
