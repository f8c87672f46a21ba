"""``Annotated`` dependencies shared by the routers: database session, clock, who is asking."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.auth import DEVICE_TOKEN_PREFIX, SESSION_COOKIE_NAME, USER_TOKEN_PREFIX, hash_token
from server.config import ServerSettings
from server.models import MAX_ROW_ID, ApiToken, Device, User
from server.users import session_of_token

API_TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)

device_bearer = HTTPBearer(scheme_name="DeviceToken", description="device token (tmd_...)", auto_error=False)
user_bearer = HTTPBearer(scheme_name="UserToken", description="user API token (tmu_...)", auto_error=False)
session_cookie = APIKeyCookie(name=SESSION_COOKIE_NAME, scheme_name="SessionCookie", auto_error=False)


def unauthorized(detail: str) -> HTTPException:
    """Return the 401 to raise, with the ``WWW-Authenticate`` header clients expect."""
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def get_settings(request: Request) -> ServerSettings:
    """Return the settings the app was created with."""
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """Yield a database session for one request; uncommitted work is rolled back."""
    with request.app.state.sessionmaker() as session:
        yield session


def get_now(request: Request) -> datetime:
    """Return the app clock's current time (aware UTC), read once per request."""
    return request.app.state.clock()


def get_client_address(request: Request) -> str | None:
    """Return the client's IP address as the server sees it, if known."""
    return request.client.host if request.client else None


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
NowDep = Annotated[datetime, Depends(get_now)]
ClientAddress = Annotated[str | None, Depends(get_client_address)]
DeviceIdPath = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
RowIdPath = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


def get_current_device(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(device_bearer)],
) -> Device:
    """Return the device whose bearer token came with the request; raise 401 otherwise."""
    if credentials is None:
        raise unauthorized("a device token is required (Authorization: Bearer tmd_...)")
    token = credentials.credentials
    if not token.startswith(DEVICE_TOKEN_PREFIX):
        raise unauthorized("not a device token")
    device = session.scalar(select(Device).where(Device.token_hash == hash_token(token)))
    if device is None:
        raise unauthorized("unknown or replaced device token; enroll again")
    return device


@dataclass(frozen=True)
class Login:
    """Who is asking and how: ``session_id`` is the session row of a cookie, None for an API token."""

    user: User
    session_id: int | None


def authenticate_user(session: Session, now: datetime, token: str | None, cookie: str | None) -> Login:
    """Return the login of an API token (preferred) or a session cookie; raise 401 otherwise.

    A disabled user's token and sessions are refused (they are deleted on disabling anyway).
    """
    if token is not None:
        if not token.startswith(USER_TOKEN_PREFIX):
            raise unauthorized("not a user API token (tmu_...)")
        row = session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == hash_token(token), User.disabled_at.is_(None))
        ).first()
        if row is None:
            raise unauthorized("unknown or revoked API token")
        api_token, user = row
        if api_token.last_used_at is None or now - api_token.last_used_at > API_TOKEN_TOUCH_INTERVAL:
            api_token.last_used_at = now
            session.commit()
        return Login(user=user, session_id=None)
    if cookie:
        found = session_of_token(session, cookie, now)
        if found is None:
            raise unauthorized("session expired or ended; log in again")
        user_session, user = found
        return Login(user=user, session_id=user_session.id)
    raise unauthorized("log in or send a user API token (Authorization: Bearer tmu_...)")


def get_current_login(
    session: SessionDep,
    now: NowDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(user_bearer)],
    cookie: Annotated[str | None, Depends(session_cookie)],
) -> Login:
    """Return who the API token or session cookie belongs to; raise 401 otherwise."""
    return authenticate_user(session, now, credentials.credentials if credentials else None, cookie)


CurrentLogin = Annotated[Login, Depends(get_current_login)]


def get_current_user(login: CurrentLogin) -> User:
    """Return the user of the API token or session cookie; raise 401 otherwise."""
    return login.user


CurrentDevice = Annotated[Device, Depends(get_current_device)]
CurrentUser = Annotated[User, Depends(get_current_user)]


def require_staff(user: CurrentUser) -> User:
    """Return the user when vendor staff (admin or support); raise 403 for customer viewers."""
    if user.role not in ("admin", "support"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="customer viewers are read-only")
    return user


def require_admin(user: CurrentUser) -> User:
    """Return the user when an admin; raise 403 otherwise."""
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="admins only")
    return user


StaffUser = Annotated[User, Depends(require_staff)]
AdminUser = Annotated[User, Depends(require_admin)]


def user_may_see(user: User, customer_id: int | None) -> bool:
    """Return True when ``user`` may see a device of ``customer_id``."""
    if user.role != "customer":
        return True
    return user.customer_id is not None and customer_id == user.customer_id


def get_visible_device(device_id: DeviceIdPath, session: SessionDep, user: CurrentUser) -> Device:
    """Return the device when the user may see it; raise 404 when absent or not theirs."""
    device = session.get(Device, device_id)
    if device is None or not user_may_see(user, device.customer_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such device")
    return device


VisibleDevice = Annotated[Device, Depends(get_visible_device)]
