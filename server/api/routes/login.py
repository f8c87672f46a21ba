"""``POST /login`` and ``POST /logout``: the session cookie of the dashboard and API.

A login is throttled by the database-backed limiter of :mod:`server.auth`: 429 for a (name,
address) or an address with too many recent failures, and a delay, for right and wrong
passwords alike, for a name that fails from many addresses. The delay is an async sleep and the
password check runs in the threadpool, so a slowed login holds neither a worker thread nor a
database connection while it waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.api.deps import ClientAddress, NowDep, SessionDep, SettingsDep, session_cookie
from server.api.models import LoginIn, UserPublic
from server.audit import record_audit
from server.auth import (
    SESSION_COOKIE_NAME,
    LoginVerdict,
    burn_password_check,
    check_login_limits,
    clear_login_failures,
    hash_token,
    record_login_failure,
    verify_password,
)
from server.config import ServerSettings
from server.models import Customer, User, UserSession
from server.users import start_session

log = logging.getLogger(__name__)

LOGIN_FORM_MAX_FIELDS = 10

router = APIRouter(tags=["users"])

_LOGIN_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": LoginIn.model_json_schema()},
            "application/x-www-form-urlencoded": {"schema": LoginIn.model_json_schema()},
        },
    }
}


async def read_login(request: Request) -> LoginIn:
    """Return the credentials of a JSON or form body; raise 4xx for anything else."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            data: Any = json.loads(await request.body())
        except ValueError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="body is not JSON") from None
        except RecursionError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="body is nested too deeply") from None
    elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form(max_files=0, max_fields=LOGIN_FORM_MAX_FIELDS)
        data = {key: value for key, value in form.items() if isinstance(value, str)}
    else:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, detail="send JSON or a form: name, password")
    if not isinstance(data, dict):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="expected an object")
    try:
        return LoginIn.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def user_public(session: Session, user: User) -> UserPublic:
    """Return the wire view of ``user`` with its customer's name."""
    customer = session.get(Customer, user.customer_id) if user.customer_id else None
    return UserPublic(id=user.id, name=user.name, role=user.role, customer=customer.name if customer else None)


def _secure(request: Request, settings: ServerSettings) -> bool:
    return request.url.scheme == "https" or settings.is_https


def set_session_cookie(response: Response, request: Request, settings: ServerSettings, token: str) -> None:
    """Put the session cookie carrying ``token`` on ``response`` (HttpOnly, SameSite=Lax, Secure on https)."""
    response.set_cookie(
        SESSION_COOKIE_NAME,
        token,
        max_age=int(settings.session_lifetime_s),
        httponly=True,
        samesite="lax",
        secure=_secure(request, settings),
        path="/",
    )


def _limits(session: Session, settings: ServerSettings, name: str, address: str | None, now: datetime) -> LoginVerdict:
    verdict = check_login_limits(
        session,
        name=name,
        address=address,
        now=now,
        window_s=settings.login_window_s,
        max_failures=settings.login_max_failures,
        address_max_failures=settings.address_max_failures,
    )
    session.rollback()  # give the connection back to the pool before any delay
    return verdict


def _check_password(
    session: Session,
    settings: ServerSettings,
    credentials: LoginIn,
    now: datetime,
    address: str | None,
    user_agent: str | None,
) -> tuple[User, str]:
    """Return (user, new session token) for right credentials; count, audit and raise 401 otherwise."""
    user = session.scalar(select(User).where(User.name == credentials.name))
    if user is None:
        burn_password_check(credentials.password)
        reason = "unknown user"
    elif not verify_password(credentials.password, user.password_hash):
        reason = "wrong password"
    elif user.disabled_at is not None:
        reason = "disabled user"
    else:
        reason = ""
    if reason or user is None:
        record_login_failure(session, name=credentials.name, address=address, now=now, window_s=settings.login_window_s)
        record_audit(
            session,
            at=now,
            actor=credentials.name,
            action="login.failed",
            target=f"user:{credentials.name}",
            details={"reason": reason},
            address=address,
        )
        session.commit()
        log.warning("failed login for %r from %s: %s", credentials.name, address, reason)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="wrong user name or password")
    clear_login_failures(session, name=credentials.name, address=address)
    token, row = start_session(
        session, user, now=now, lifetime_s=settings.session_lifetime_s, address=address, user_agent=user_agent
    )
    record_audit(
        session,
        at=now,
        actor=f"user:{user.name}",
        action="login.ok",
        target=f"user:{user.name}",
        details={"session": row.id},
        address=address,
    )
    session.commit()
    return user, token


def refuse_cross_site(request: Request, settings: SettingsDep) -> None:
    """Raise 403 for a request a browser sent from another site (its ``Origin`` is neither this
    server's ``Host`` nor the public URL): a cross-site form must not log a victim's browser into
    the sender's account or out of its own. Clients that send no ``Origin`` are not browsers."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    allowed = {request.headers.get("host", "")}
    if settings.public_url:
        allowed.add(urlsplit(settings.public_url).netloc)
    if urlsplit(origin).netloc not in allowed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="cross-site request refused")


@router.post(
    "/login",
    openapi_extra=_LOGIN_BODY_DOC,
    dependencies=[Depends(refuse_cross_site)],
    responses={
        403: {"description": "sent by a browser from another site"},
        400: {"description": "the body is not JSON"},
        401: {"description": "wrong name or password (or a disabled user)"},
        415: {"description": "neither JSON nor a form"},
        429: {"description": "too many failed logins from this address; see Retry-After"},
    },
)
async def login(
    credentials: Annotated[LoginIn, Depends(read_login)],
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
) -> UserPublic:
    """Check name and password and set the session cookie; failures are counted and audited.

    Raises 429 (with Retry-After) while the name is blocked from this address or the address
    is blocked, 401 for a wrong name or password or a disabled user.
    """
    verdict = await run_in_threadpool(_limits, session, settings, credentials.name, address, now)
    if verdict.retry_after_s:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many failed logins; try again in {verdict.retry_after_s} s",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )
    if verdict.delay_s:
        await asyncio.sleep(verdict.delay_s)
    user, token = await run_in_threadpool(
        _check_password, session, settings, credentials, now, address, request.headers.get("user-agent")
    )
    set_session_cookie(response, request, settings, token)
    return await run_in_threadpool(user_public, session, user)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Depends(refuse_cross_site)],
    responses={403: {"description": "sent by a browser from another site"}},
)
def logout(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
    cookie: Annotated[str | None, Depends(session_cookie)] = None,
) -> Response:
    """End the session of the cookie on the server (audited) and drop the cookie; always 204."""
    if cookie:
        found = session.execute(
            select(UserSession, User)
            .join(User, User.id == UserSession.user_id)
            .where(UserSession.token_hash == hash_token(cookie))
        ).first()
        if found is not None:
            row, user = found
            session.delete(row)
            record_audit(
                session,
                at=now,
                actor=f"user:{user.name}",
                action="logout",
                target=f"user:{user.name}",
                details={"session": row.id},
                address=address,
            )
            session.commit()
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(
        SESSION_COOKIE_NAME, path="/", httponly=True, samesite="lax", secure=_secure(request, settings)
    )
    return response
