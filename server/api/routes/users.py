"""Users: the logged-in user's sessions, password and API tokens; user management for admins.

The rules (who may disable whom, what a password change revokes, the audit) live in
:mod:`server.users`, shared with the CLI and the dashboard.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.api.deps import (
    AdminUser,
    ClientAddress,
    CurrentLogin,
    CurrentUser,
    NowDep,
    RowIdPath,
    SessionDep,
    SettingsDep,
)
from server.api.models import (
    ApiTokenCreated,
    ApiTokenIn,
    ApiTokenListOut,
    ApiTokenPublic,
    PasswordChangeIn,
    PasswordIn,
    UserDetail,
    UserListOut,
    UserPublic,
    UserSessionListOut,
    UserSessionPublic,
)
from server.api.routes.login import set_session_cookie, user_public
from server.audit import record_audit
from server.auth import (
    USER_TOKEN_PREFIX,
    check_login_limits,
    clear_login_failures,
    hash_token,
    new_token,
    record_login_failure,
    verify_password,
)
from server.config import ServerSettings
from server.models import ApiToken, User
from server.users import (
    UserChangeRefused,
    UserNotFound,
    disable_user,
    enable_user,
    end_session,
    get_user,
    list_sessions,
    list_users,
    revoke_token,
    set_password,
    start_session,
    summarize_users,
    user_tokens,
)

router = APIRouter(prefix="/users/me", tags=["users"])
admin_router = APIRouter(prefix="/users", tags=["users"])

_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"description": "not logged in"}}
_ADMIN: dict[int | str, dict[str, Any]] = {
    401: {"description": "not logged in"},
    403: {"description": "admins only"},
    404: {"description": "no such user"},
}


def _actor(user: User) -> str:
    return f"user:{user.name}"


def user_detail(session: Session, user: User, now: datetime) -> UserDetail:
    """Return the admin's view of ``user``."""
    (summary,) = summarize_users(session, [user], now)
    return UserDetail(
        id=user.id,
        name=user.name,
        role=user.role,  # type: ignore[arg-type]
        customer=summary.customer,
        created_at=user.created_at,
        disabled_at=user.disabled_at,
        sessions=summary.sessions,
        tokens=summary.tokens,
    )


def _managed_user(session: Session, user_id: int) -> User:
    try:
        return get_user(session, user_id)
    except UserNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None


def _conflict(exc: UserChangeRefused) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))


# ---------------------------------------------------------------- the logged-in user


@router.get("", responses=_UNAUTHORIZED)
def get_me(user: CurrentUser, session: SessionDep) -> UserPublic:
    """Return who the credentials belong to."""
    return user_public(session, user)


def change_own_password(
    session: Session,
    settings: ServerSettings,
    user: User,
    body: PasswordChangeIn,
    *,
    now: datetime,
    address: str | None,
    user_agent: str | None,
    with_session: bool,
) -> str | None:
    """Change the user's password after checking the current one; return a new session token or None.

    Every session and API token of the user is revoked (a copied cookie dies too); when
    ``with_session``, a fresh session is started for the caller. Raises 429 while the limiter
    blocks the name from this address, 403 for a wrong current password (counted as a failed
    login).
    """
    verdict = check_login_limits(
        session,
        name=user.name,
        address=address,
        now=now,
        window_s=settings.login_window_s,
        max_failures=settings.login_max_failures,
        address_max_failures=settings.address_max_failures,
    )
    if verdict.retry_after_s:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"too many failed attempts; try again in {verdict.retry_after_s} s",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )
    if not verify_password(body.current_password, user.password_hash):
        record_login_failure(session, name=user.name, address=address, now=now, window_s=settings.login_window_s)
        record_audit(
            session,
            at=now,
            actor=_actor(user),
            action="login.failed",
            target=_actor(user),
            details={"reason": "wrong current password"},
            address=address,
        )
        session.commit()
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="the current password is wrong")
    clear_login_failures(session, name=user.name, address=address)
    set_password(session, user, body.new_password, now=now, actor=_actor(user), address=address)
    token = None
    if with_session:
        token, _row = start_session(
            session, user, now=now, lifetime_s=settings.session_lifetime_s, address=address, user_agent=user_agent
        )
    session.commit()
    return token


@router.put(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **_UNAUTHORIZED,
        403: {"description": "the current password is wrong"},
        429: {"description": "too many failed attempts; see Retry-After"},
    },
)
def put_my_password(
    body: PasswordChangeIn,
    login: CurrentLogin,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
) -> Response:
    """Change your password (giving the current one); all your sessions and API tokens end.

    A caller logged in with the session cookie gets a fresh cookie; one using an API token must
    log in or create a token again.
    """
    token = change_own_password(
        session,
        settings,
        login.user,
        body,
        now=now,
        address=address,
        user_agent=request.headers.get("user-agent"),
        with_session=login.session_id is not None,
    )
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    if token is not None:
        set_session_cookie(response, request, settings, token)
    return response


@router.get("/sessions", responses=_UNAUTHORIZED)
def list_my_sessions(login: CurrentLogin, session: SessionDep, now: NowDep) -> UserSessionListOut:
    """Return your live sessions, newest first; ``current`` marks the one of this request's cookie."""
    rows = list_sessions(session, login.user, now)
    return UserSessionListOut(
        sessions=[
            UserSessionPublic.model_validate(row).model_copy(update={"current": row.id == login.session_id})
            for row in rows
        ]
    )


@router.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_UNAUTHORIZED, 404: {"description": "no such session of yours"}},
)
def end_my_session(
    session_id: RowIdPath,
    user: CurrentUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> Response:
    """End one of your sessions (its cookie stops working at once)."""
    try:
        end_session(session, user, session_id, now=now, actor=_actor(user), address=address)
    except UserNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/tokens", status_code=status.HTTP_201_CREATED, responses=_UNAUTHORIZED)
def create_token(
    body: ApiTokenIn,
    user: CurrentUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> ApiTokenCreated:
    """Create an API token with the user's rights; the token is shown only in this answer."""
    token = new_token(USER_TOKEN_PREFIX)
    row = ApiToken(user_id=user.id, name=body.name, token_hash=hash_token(token), created_at=now)
    session.add(row)
    session.flush()
    record_audit(
        session,
        at=now,
        actor=_actor(user),
        action="api_token.create",
        target=f"api_token:{row.id}",
        details={"name": body.name},
        address=address,
    )
    session.commit()
    return ApiTokenCreated(id=row.id, name=row.name, created_at=row.created_at, last_used_at=None, token=token)


@router.get("/tokens", responses=_UNAUTHORIZED)
def list_tokens(user: CurrentUser, session: SessionDep) -> ApiTokenListOut:
    """Return the user's API tokens (never the tokens themselves)."""
    rows = session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)).all()
    return ApiTokenListOut(tokens=[ApiTokenPublic.model_validate(r) for r in rows])


@router.delete(
    "/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_UNAUTHORIZED, 404: {"description": "no such token of yours"}},
)
def revoke_my_token(
    token_id: RowIdPath,
    user: CurrentUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> Response:
    """Revoke one of the user's API tokens."""
    try:
        revoke_token(session, user, token_id, now=now, actor=_actor(user), address=address)
    except UserNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# ---------------------------------------------------------------- user management (admins)


@admin_router.get("", responses={401: _ADMIN[401], 403: _ADMIN[403]})
def list_all_users(_admin: AdminUser, session: SessionDep, now: NowDep) -> UserListOut:
    """Return every user by name, enabled or not, with counts of live sessions and API tokens."""
    return UserListOut(users=[user_detail(session, s.user, now) for s in list_users(session, now)])


@admin_router.get("/{user_id}", responses=_ADMIN)
def get_one_user(user_id: RowIdPath, _admin: AdminUser, session: SessionDep, now: NowDep) -> UserDetail:
    """Return one user."""
    return user_detail(session, _managed_user(session, user_id), now)


@admin_router.put(
    "/{user_id}/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_ADMIN, 409: {"description": "your own password: change it with the current one"}},
)
def put_user_password(
    user_id: RowIdPath,
    body: PasswordIn,
    admin: AdminUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> Response:
    """Set another user's password; all that user's sessions and API tokens end (audited)."""
    user = _managed_user(session, user_id)
    if user.id == admin.id:
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail="change your own password at /users/me/password, with the current one"
        )
    set_password(session, user, body.password, now=now, actor=_actor(admin), address=address)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@admin_router.post(
    "/{user_id}/disable",
    responses={**_ADMIN, 409: {"description": "yourself, the last enabled admin, or disabled already"}},
)
def disable_one_user(
    user_id: RowIdPath,
    admin: AdminUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> UserDetail:
    """Disable a user: no login, and their sessions and API tokens are deleted at once (audited)."""
    user = _managed_user(session, user_id)
    try:
        disable_user(session, user, now=now, actor=_actor(admin), by=admin, address=address)
    except UserChangeRefused as exc:
        raise _conflict(exc) from None
    session.commit()
    return user_detail(session, user, now)


@admin_router.post("/{user_id}/enable", responses={**_ADMIN, 409: {"description": "the user is not disabled"}})
def enable_one_user(
    user_id: RowIdPath,
    admin: AdminUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> UserDetail:
    """Enable a disabled user again; they log in with their password (audited)."""
    user = _managed_user(session, user_id)
    try:
        enable_user(session, user, now=now, actor=_actor(admin), address=address)
    except UserChangeRefused as exc:
        raise _conflict(exc) from None
    session.commit()
    return user_detail(session, user, now)


@admin_router.get("/{user_id}/tokens", responses=_ADMIN)
def list_user_tokens(user_id: RowIdPath, _admin: AdminUser, session: SessionDep) -> ApiTokenListOut:
    """Return a user's API tokens (never the tokens themselves)."""
    user = _managed_user(session, user_id)
    return ApiTokenListOut(tokens=[ApiTokenPublic.model_validate(r) for r in user_tokens(session, user)])


@admin_router.delete(
    "/{user_id}/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_ADMIN, 404: {"description": "no such user, or no such token of the user"}},
)
def revoke_user_token(
    user_id: RowIdPath,
    token_id: RowIdPath,
    admin: AdminUser,
    session: SessionDep,
    now: NowDep,
    address: ClientAddress,
) -> Response:
    """Revoke one of a user's API tokens (audited)."""
    user = _managed_user(session, user_id)
    try:
        revoke_token(session, user, token_id, now=now, actor=_actor(admin), address=address)
    except UserNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
