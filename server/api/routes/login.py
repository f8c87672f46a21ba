"""``POST /login`` and ``POST /logout``: the signed session cookie of the dashboard and API."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.api.deps import ClientAddress, NowDep, SessionDep, SettingsDep
from server.api.models import LoginIn, UserPublic
from server.audit import record_audit
from server.auth import (
    SESSION_COOKIE_NAME,
    SessionClaims,
    burn_password_check,
    password_fingerprint,
    sign_session,
    verify_password,
)
from server.models import Customer, User

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


@router.post(
    "/login",
    openapi_extra=_LOGIN_BODY_DOC,
    responses={401: {"description": "wrong name or password"}, 429: {"description": "slow down"}},
)
def login(
    credentials: Annotated[LoginIn, Depends(read_login)],
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
) -> UserPublic:
    """Check name and password and set the session cookie; failures are counted and audited."""
    limiter = request.app.state.login_limiter
    wait_s = limiter.retry_after_s(credentials.name, address)
    if wait_s:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many failed logins; try again in {wait_s} s",
            headers={"Retry-After": str(wait_s)},
        )
    user = session.scalar(select(User).where(User.name == credentials.name))
    if user is None:
        burn_password_check(credentials.password)
        ok, reason = False, "unknown user"
    else:
        ok = verify_password(credentials.password, user.password_hash)
        reason = "" if ok else "wrong password"
    if not ok or user is None:
        limiter.record_failure(credentials.name, address)
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
    limiter.record_success(credentials.name)
    record_audit(
        session,
        at=now,
        actor=f"user:{user.name}",
        action="login.ok",
        target=f"user:{user.name}",
        address=address,
    )
    session.commit()
    assert settings.secret_key is not None
    claims = SessionClaims(
        user_id=user.id,
        password_fingerprint=password_fingerprint(user.password_hash),
        expires_at_s=int(now.timestamp() + settings.session_lifetime_s),
    )
    response.set_cookie(
        SESSION_COOKIE_NAME,
        sign_session(settings.secret_key.get_secret_value(), claims),
        max_age=int(settings.session_lifetime_s),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https" or settings.is_https,
        path="/",
    )
    return user_public(session, user)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, settings: SettingsDep) -> Response:
    """Drop the session cookie."""
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(
        SESSION_COOKIE_NAME,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https" or settings.is_https,
    )
    return response
