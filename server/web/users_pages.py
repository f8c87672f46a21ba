"""Dashboard pages for accounts: your sessions and password; users, for admins.

Like the other pages they go through the API's route functions (:mod:`server.api.routes.users`),
so the dashboard applies the same rules and audit; every form carries a CSRF token.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.api.deps import ClientAddress, Login, NowDep, SessionDep, SettingsDep, require_admin
from server.api.models import PasswordChangeIn, PasswordIn
from server.api.routes import login as login_api
from server.api.routes import users as users_api
from server.auth import SESSION_COOKIE_NAME, hash_token
from server.config import ServerSettings
from server.models import User, UserSession
from server.web.routes import (
    FORM_EXPIRED,
    WebUser,
    _copy_cookies,
    _csrf_refused,
    _error_page,
    _row_id,
    _user_context,
    render,
)

router = APIRouter(include_in_schema=False)

NOTICES = {
    "password": "Your password was changed; your other sessions and your API tokens were ended.",
    "ended": "The session was ended.",
}
USER_NOTICES = {
    "password": "The password was set; the user's sessions and API tokens were ended.",
    "disabled": "The user was disabled; their sessions and API tokens were ended.",
    "enabled": "The user was enabled again.",
    "revoked": "The API token was revoked.",
}


def _validation_message(exc: ValidationError) -> str:
    message = str(exc.errors()[0].get("msg", "invalid input")).removeprefix("Value error, ")
    return message[:1].upper() + message[1:] + "."


def _current_session_id(request: Request, session: Session) -> int | None:
    cookie = request.cookies.get(SESSION_COOKIE_NAME)
    if not cookie:
        return None
    return session.scalar(select(UserSession.id).where(UserSession.token_hash == hash_token(cookie)))


# ---------------------------------------------------------------- your account


def _account_page(
    request: Request,
    session: Session,
    settings: ServerSettings,
    user: User,
    now: datetime,
    *,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = status.HTTP_200_OK,
) -> Response:
    login = Login(user=user, session_id=_current_session_id(request, session))
    context = {
        **_user_context(request, session, settings, user),
        "sessions": users_api.list_my_sessions(login=login, session=session, now=now).sessions,
        "notice": notice,
        "error": error,
        "now": now,
    }
    return render(request, "account.html", context, status_code=status_code)


@router.get("/account")
def account_view(
    request: Request,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    done: str | None = None,
) -> Response:
    """Your sessions (end any of them) and the password change form."""
    return _account_page(request, session, settings, user, now, notice=NOTICES.get(done or ""))


@router.post("/account/sessions/{session_id}/end")
def account_end_session(
    request: Request,
    session_id: str,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """End one of your sessions; ending this very one logs you out."""
    if _csrf_refused(request, settings, csrf_token):
        return _error_page(request, 403, FORM_EXPIRED, _user_context(request, session, settings, user))
    number = _row_id(session_id)
    current = _current_session_id(request, session)
    try:
        if number is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such session")
        users_api.end_my_session(session_id=number, user=user, session=session, now=now, address=address)
    except HTTPException as exc:
        return _error_page(
            request,
            exc.status_code,
            "There is no such session of yours.",
            _user_context(request, session, settings, user),
        )
    if number == current:
        redirect = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
        redirect.delete_cookie(SESSION_COOKIE_NAME, path="/")
        return redirect
    return RedirectResponse("/account?done=ended", status.HTTP_303_SEE_OTHER)


@router.post("/account/password")
def account_password(
    request: Request,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
    current_password: Annotated[str, Form()] = "",
    new_password: Annotated[str, Form()] = "",
    repeat_password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """Change your password (the current one is required); you stay logged in with a new session."""
    if _csrf_refused(request, settings, csrf_token):
        return _error_page(request, 403, FORM_EXPIRED, _user_context(request, session, settings, user))
    if not current_password:
        return _account_page(
            request, session, settings, user, now, error="Enter your current password.", status_code=400
        )
    if new_password != repeat_password:
        return _account_page(
            request, session, settings, user, now, error="The new passwords do not match.", status_code=400
        )
    try:
        body = PasswordChangeIn(current_password=current_password, new_password=new_password)
    except ValidationError as exc:
        return _account_page(request, session, settings, user, now, error=_validation_message(exc), status_code=400)
    try:
        token = users_api.change_own_password(
            session,
            settings,
            user,
            body,
            now=now,
            address=address,
            user_agent=request.headers.get("user-agent"),
            with_session=True,
        )
    except HTTPException as exc:
        message = "The current password is wrong." if exc.status_code == 403 else f"{str(exc.detail).capitalize()}."
        return _account_page(request, session, settings, user, now, error=message, status_code=exc.status_code)
    redirect = RedirectResponse("/account?done=password", status.HTTP_303_SEE_OTHER)
    assert token is not None
    holder = Response()
    login_api.set_session_cookie(holder, request, settings, token)
    _copy_cookies(holder, redirect)
    return redirect


# ---------------------------------------------------------------- users (admins)


def _admin_or_error(request: Request, session: Session, settings: ServerSettings, user: User) -> Response | None:
    try:
        require_admin(user)
    except HTTPException:
        return _error_page(
            request, 403, "User management is for admins only.", _user_context(request, session, settings, user)
        )
    return None


@router.get("/users")
def users_view(
    request: Request,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> Response:
    """Every user, enabled or not, with live sessions and API tokens (admins only)."""
    refused = _admin_or_error(request, session, settings, user)
    if refused:
        return refused
    listed = users_api.list_all_users(_admin=user, session=session, now=now)
    context = {**_user_context(request, session, settings, user), "users": listed.users}
    return render(request, "users.html", context)


def _user_page(
    request: Request,
    session: Session,
    settings: ServerSettings,
    admin: User,
    user_id: int,
    now: datetime,
    *,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = status.HTTP_200_OK,
) -> Response:
    context = {
        **_user_context(request, session, settings, admin),
        "user": users_api.get_one_user(user_id=user_id, _admin=admin, session=session, now=now),
        "tokens": users_api.list_user_tokens(user_id=user_id, _admin=admin, session=session).tokens,
        "notice": notice,
        "error": error,
    }
    return render(request, "user.html", context, status_code=status_code)


@router.get("/users/{user_id}")
def user_view(
    request: Request,
    user_id: str,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    done: str | None = None,
) -> Response:
    """One user: disable or enable, set the password, revoke API tokens (admins only)."""
    refused = _admin_or_error(request, session, settings, user)
    if refused:
        return refused
    number = _row_id(user_id)
    try:
        if number is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND)
        return _user_page(request, session, settings, user, number, now, notice=USER_NOTICES.get(done or ""))
    except HTTPException:
        return _error_page(request, 404, "There is no such user.", _user_context(request, session, settings, user))


@router.post("/users/{user_id}/{action}")
def user_change(
    request: Request,
    user_id: str,
    action: str,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
    csrf_token: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
) -> Response:
    """Disable, enable or set the password of a user (admins only), then show the user."""
    user_context = _user_context(request, session, settings, user)
    if _csrf_refused(request, settings, csrf_token):
        return _error_page(request, 403, FORM_EXPIRED, user_context)
    refused = _admin_or_error(request, session, settings, user)
    if refused:
        return refused
    number = _row_id(user_id)
    if number is None or action not in ("disable", "enable", "password"):
        return _error_page(request, 404, "There is no such user.", user_context)
    change = {"admin": user, "session": session, "now": now, "address": address}
    try:
        if action == "disable":
            users_api.disable_one_user(user_id=number, **change)
            done = "disabled"
        elif action == "enable":
            users_api.enable_one_user(user_id=number, **change)
            done = "enabled"
        else:
            try:
                body = PasswordIn(password=password)
            except ValidationError as exc:
                return _user_page(
                    request, session, settings, user, number, now, error=_validation_message(exc), status_code=400
                )
            users_api.put_user_password(user_id=number, body=body, **change)
            done = "password"
    except HTTPException as exc:
        if exc.status_code == status.HTTP_404_NOT_FOUND:
            return _error_page(request, 404, "There is no such user.", user_context)
        return _user_page(
            request,
            session,
            settings,
            user,
            number,
            now,
            error=f"{str(exc.detail).capitalize()}.",
            status_code=exc.status_code,
        )
    return RedirectResponse(f"/users/{number}?done={done}", status.HTTP_303_SEE_OTHER)


@router.post("/users/{user_id}/tokens/{token_id}/revoke")
def user_token_revoke(
    request: Request,
    user_id: str,
    token_id: str,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """Revoke one of a user's API tokens (admins only), then show the user."""
    user_context = _user_context(request, session, settings, user)
    if _csrf_refused(request, settings, csrf_token):
        return _error_page(request, 403, FORM_EXPIRED, user_context)
    refused = _admin_or_error(request, session, settings, user)
    if refused:
        return refused
    number, token_number = _row_id(user_id), _row_id(token_id)
    try:
        if number is None or token_number is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND)
        users_api.revoke_user_token(
            user_id=number, token_id=token_number, admin=user, session=session, now=now, address=address
        )
    except HTTPException:
        return _error_page(request, 404, "There is no such token.", user_context)
    return RedirectResponse(f"/users/{number}?done=revoked", status.HTTP_303_SEE_OTHER)
