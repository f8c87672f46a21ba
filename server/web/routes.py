"""Dashboard pages: login, device list, one device, audit log.

The pages read and write through the API's own route functions (:mod:`server.api.routes`), so
that the dashboard shows what the API says and applies the same rules: the same session
cookie, login throttling and audit, device visibility (404 for a device that is not the
user's) and command permissions. Every POST form carries a CSRF token (:mod:`server.web.csrf`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy.orm import Session

from server.api.deps import (
    MAX_ROW_ID,
    ClientAddress,
    NowDep,
    SessionDep,
    SettingsDep,
    authenticate_user,
    get_visible_device,
    require_admin,
)
from server.api.models import CommandIn, DeviceCustomerIn, DeviceStatus, LoginIn
from server.api.routes import audit as audit_api
from server.api.routes import devices as devices_api
from server.api.routes import login as login_api
from server.auth import SESSION_COOKIE_NAME
from server.clock import as_utc
from server.config import ServerSettings
from server.models import COMMAND_KINDS, HEALTH_STATUSES, Device, User
from server.web import TEMPLATES_DIR, csrf, device_page
from server.web.queries import customer_names, health_samples

log = logging.getLogger(__name__)

DEVICES_PER_PAGE = 100
AUDIT_EVENTS_PER_PAGE = 50
HEALTH_HISTORY_REPORTS = 10
COMMANDS_SHOWN = 20
PENDING_COMMAND_REFRESH_S = 3
QUERY_MAX_CHARS = 200
PAGE_NUMBER_MAX = 1_000_000
DEVICE_STATUSES: tuple[DeviceStatus, ...] = ("online", "late", "offline")
PENDING_COMMAND_STATUSES = ("queued", "sent")
COMMAND_LABELS = {"run_checks": "Run checks now", "collect_inventory": "Collect inventory"}
LOGIN_NONCE_PREFIX = "login:"

# No script runs on these pages; nothing may frame them (a framed "Run checks now" button
# could be clicked for the user).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


FORM_EXPIRED = "The form had expired; reload the page and try again."

# ---------------------------------------------------------------- template filters


def _as_datetime(value: Any) -> datetime | None:
    # A device's report may carry any time: one that UTC cannot hold is shown as the text it is.
    try:
        if isinstance(value, datetime):
            return as_utc(value)
        if isinstance(value, str) and value:
            return as_utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        return None
    return None


def format_time(value: Any) -> str:
    """Return a UTC time as ``2026-03-02 09:00:05 UTC``; text that is no time as it is; None as ``—``."""
    moment = _as_datetime(value)
    if moment is None:
        return "—" if value in (None, "") else str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def format_age(value: Any, now: datetime) -> str:
    """Return how long ago ``value`` was: ``just now``, ``5 min ago``, ``3 h ago``, ``2 d ago``."""
    moment = _as_datetime(value)
    if moment is None:
        return "never"
    age_s = (now - moment).total_seconds()
    if age_s < 0:
        return "in the future"
    if age_s < 60:
        return "just now"
    if age_s < 3600:
        return f"{int(age_s // 60)} min ago"
    if age_s < 86400:
        return f"{int(age_s // 3600)} h ago"
    return f"{int(age_s // 86400)} d ago"


def format_bytes(value: Any) -> str:
    """Return a byte count in binary units: ``512 B``, ``1.5 GiB``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"


def format_duration(value: Any) -> str:
    """Return seconds as ``3 d 4 h``, ``2 h 5 min`` or ``42 s``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    seconds = int(value)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def format_number(value: Any) -> str:
    """Return a number without a needless ``.0``; anything else as ``—``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=format_time,
        ago=format_age,
        size=format_bytes,
        duration=format_duration,
        num=format_number,
    )
    env.globals["command_labels"] = COMMAND_LABELS
    return env


templates = Jinja2Templates(env=_environment())


# ---------------------------------------------------------------- helpers


def _secret(settings: ServerSettings) -> str:
    assert settings.secret_key is not None  # create_app refuses settings without one
    return settings.secret_key.get_secret_value()


def _secure_cookies(request: Request, settings: ServerSettings) -> bool:
    return request.url.scheme == "https" or settings.is_https


def safe_next(target: str | None) -> str:
    """Return ``target`` when it is a path on this server, else ``/`` (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if any(ord(ch) < 32 or ch == "\\" for ch in target):
        return "/"
    return target


def _login_url(request: Request) -> str:
    if request.method != "GET":
        return "/login"
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login" if here == "/" else "/login?" + urlencode({"next": here})


def query_text(value: str | None) -> str | None:
    """Return a search or filter text cut to what the API accepts (printable, 200 chars), or None."""
    if value is None:
        return None
    text = "".join(ch for ch in value if ch.isprintable()).strip()[:QUERY_MAX_CHARS]
    return text or None


def page_number(value: str | None) -> int:
    """Return the page asked for (1 when absent or not a page number)."""
    try:
        number = int(value or 1)
    except ValueError:
        return 1
    return min(max(number, 1), PAGE_NUMBER_MAX)


def _copy_cookies(source: Response, target: Response) -> None:
    target.raw_headers.extend((k, v) for k, v in source.raw_headers if k == b"set-cookie")


def get_web_user(request: Request, session: SessionDep, now: NowDep) -> User:
    """Return the user of the session cookie; without a live one, redirect (303) to the login.

    An ended session (logout, password change, disabled user) redirects on the next click.
    """
    try:
        return authenticate_user(session, now, None, request.cookies.get(SESSION_COOKIE_NAME)).user
    except HTTPException:
        raise HTTPException(
            status.HTTP_303_SEE_OTHER, detail="log in first", headers={"Location": _login_url(request)}
        ) from None


WebUser = Annotated[User, Depends(get_web_user)]


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = status.HTTP_200_OK,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Return the rendered template with the dashboard's security headers."""
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers={**PAGE_HEADERS, **(headers or {})}
    )


def _user_context(request: Request, session: Session, settings: ServerSettings, user: User) -> dict[str, Any]:
    cookie = request.cookies.get(SESSION_COOKIE_NAME) or ""
    return {"me": login_api.user_public(session, user), "csrf_token": csrf.csrf_token(_secret(settings), cookie)}


def _error_page(
    request: Request,
    status_code: int,
    message: str,
    user_context: dict[str, Any] | None = None,
) -> Response:
    titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 429: "Slow down"}
    context = {**(user_context or {}), "title": titles.get(status_code, "Error"), "message": message}
    return render(request, "error.html", context, status_code=status_code)


def _csrf_refused(request: Request, settings: ServerSettings, token: str) -> bool:
    return not csrf.csrf_token_valid(_secret(settings), request.cookies.get(SESSION_COOKIE_NAME), token)


def _row_id(text: str) -> int | None:
    """Return the row id a path segment names, or None when it names none."""
    try:
        number = int(text)
    except ValueError:
        return None
    return number if 1 <= number <= MAX_ROW_ID else None


def _visible_device(device_id: str, session: Session, user: User) -> Device | None:
    number = _row_id(device_id)
    if number is None:
        return None
    try:
        return get_visible_device(device_id=number, session=session, user=user)
    except HTTPException:
        return None


# ---------------------------------------------------------------- login and logout


def _login_form(
    request: Request,
    settings: ServerSettings,
    *,
    next_path: str | None,
    name: str = "",
    error: str | None = None,
    status_code: int = status.HTTP_200_OK,
    headers: Mapping[str, str] | None = None,
) -> Response:
    nonce = request.cookies.get(csrf.LOGIN_NONCE_COOKIE) or csrf.new_login_nonce()
    context = {
        "csrf_token": csrf.csrf_token(_secret(settings), LOGIN_NONCE_PREFIX + nonce),
        "next": safe_next(next_path),
        "name": name,
        "error": error,
    }
    response = render(request, "login.html", context, status_code=status_code, headers=headers)
    if nonce != request.cookies.get(csrf.LOGIN_NONCE_COOKIE):
        response.set_cookie(
            csrf.LOGIN_NONCE_COOKIE,
            nonce,
            httponly=True,
            samesite="strict",
            secure=_secure_cookies(request, settings),
            path="/login",
        )
    return response


@router.get("/login")
def login_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    next_path: Annotated[str | None, Query(alias="next")] = None,
) -> Response:
    """The login form; a user already logged in goes on to the page asked for."""
    if request.cookies.get(SESSION_COOKIE_NAME):
        try:
            get_web_user(request=request, session=session, now=now)
            return RedirectResponse(safe_next(next_path), status.HTTP_303_SEE_OTHER)
        except HTTPException:
            pass
    return _login_form(request, settings, next_path=next_path)


@router.post("/login")
async def login_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
    name: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next_path: Annotated[str, Form(alias="next")] = "/",
) -> Response:
    """Log in through the API's login (same cookie, throttling, audit); on success go on."""
    nonce = request.cookies.get(csrf.LOGIN_NONCE_COOKIE)
    if not csrf.csrf_token_valid(_secret(settings), LOGIN_NONCE_PREFIX + nonce if nonce else None, csrf_token):
        return _login_form(
            request,
            settings,
            next_path=next_path,
            name=name,
            error="The login form had expired. Please enter your password again.",
            status_code=status.HTTP_403_FORBIDDEN,
        )
    try:
        credentials = LoginIn.model_validate({"name": name, "password": password})
    except ValidationError:
        return _login_form(
            request,
            settings,
            next_path=next_path,
            name=name,
            error="Enter your user name and password.",
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    cookie_holder = Response()
    try:
        await login_api.login(
            credentials=credentials,
            request=request,
            response=cookie_holder,
            session=session,
            settings=settings,
            now=now,
            address=address,
        )
    except HTTPException as exc:
        return _login_form(
            request,
            settings,
            next_path=next_path,
            name=name,
            error=f"{str(exc.detail).capitalize()}.",
            status_code=exc.status_code,
            headers=exc.headers,
        )
    redirect = RedirectResponse(safe_next(next_path), status.HTTP_303_SEE_OTHER)
    _copy_cookies(cookie_holder, redirect)
    redirect.delete_cookie(csrf.LOGIN_NONCE_COOKIE, path="/login")
    return redirect


@router.post("/logout")
def logout_submit(
    request: Request,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """End the session (on the server too) and show the login form."""
    if _csrf_refused(request, settings, csrf_token):
        return _error_page(
            request, 403, "The form had expired; reload the page.", _user_context(request, session, settings, user)
        )
    redirect = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    ended = login_api.logout(request, session, settings, now, address, cookie=request.cookies.get(SESSION_COOKIE_NAME))
    _copy_cookies(ended, redirect)
    return redirect


# ---------------------------------------------------------------- devices


@router.get("/")
def device_list(
    request: Request,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    q: str | None = None,
    status_filter: Annotated[str | None, Query(alias="status")] = None,
    customer: str | None = None,
    health: str | None = None,
    page: str | None = None,
) -> Response:
    """The devices the user may see, with status and worst health; search and filters."""
    filters = {
        "q": query_text(q),
        "status": status_filter if status_filter in DEVICE_STATUSES else None,
        "customer": query_text(customer) if user.role != "customer" else None,
        "health": health if health in HEALTH_STATUSES else None,
    }
    number = page_number(page)
    listed = devices_api.list_devices(
        session=session,
        user=user,
        now=now,
        q=filters["q"],
        customer=filters["customer"],
        status_filter=filters["status"],  # type: ignore[arg-type]
        health=filters["health"],  # type: ignore[arg-type]
        limit=DEVICES_PER_PAGE,
        offset=(number - 1) * DEVICES_PER_PAGE,
    )
    active = {k: v for k, v in filters.items() if v}
    pages = max(1, -(-listed.total // DEVICES_PER_PAGE))
    context = {
        **_user_context(request, session, settings, user),
        "devices": listed.devices,
        "total": listed.total,
        "filters": filters,
        "filtered": bool(active),
        "customers": customer_names(session) if user.role != "customer" else [],
        "device_statuses": DEVICE_STATUSES,
        "health_statuses": HEALTH_STATUSES,
        "page": number,
        "pages": pages,
        "prev_url": "/?" + urlencode({**active, "page": number - 1}) if number > 1 else None,
        "next_url": "/?" + urlencode({**active, "page": number + 1}) if number < pages else None,
        "now": now,
    }
    return render(request, "devices.html", context)


@router.get("/devices/{device_id}")
def device_view(
    request: Request,
    device_id: str,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> Response:
    """One device: identity, health now and before, network sheet, versions, log errors, commands."""
    user_context = _user_context(request, session, settings, user)
    device = _visible_device(device_id, session, user)
    if device is None:
        return _error_page(request, 404, "There is no such device, or it is not yours to see.", user_context)
    detail = devices_api.get_device(device=device, session=session, now=now)
    health_reports = health_samples(session, device.id, HEALTH_HISTORY_REPORTS)
    usage = devices_api.device_usage(device=device, session=session, settings=settings)
    commands = devices_api.list_commands(device=device, session=session, limit=COMMANDS_SHOWN).commands
    pending = any(c.status in PENDING_COMMAND_STATUSES for c in commands)
    context = {
        **user_context,
        "device": detail,
        "system": device_page.system_sheet(detail.inventory),
        "network": device_page.network_sheet(detail.inventory),
        "versions": device_page.versions_sheet(detail.inventory, detail.versions, detail.version_history),
        "logs": device_page.log_errors(detail.inventory),
        "health": device_page.health_now(detail.health, detail.health_at),
        "health_history": device_page.health_history(health_reports),
        "storage": device_page.storage_usage(usage, now),
        "commands": [(c, device_page.command_result(c)) for c in commands],
        "command_kinds": COMMAND_KINDS,
        "may_command": user.role in ("admin", "support"),
        "may_assign": user.role == "admin",
        "claimed_customer": detail.claimed_customer,
        "customers": customer_names(session) if user.role == "admin" else [],
        "pending": pending,
        "refresh_s": PENDING_COMMAND_REFRESH_S if pending else None,
        "now": now,
    }
    return render(request, "device.html", context)


@router.post("/devices/{device_id}/commands")
def device_command(
    request: Request,
    device_id: str,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
    kind: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """Queue an allowlisted command through the API (support and admins only), then show the device."""
    user_context = _user_context(request, session, settings, user)
    if _csrf_refused(request, settings, csrf_token):
        return _error_page(request, 403, FORM_EXPIRED, user_context)
    device = _visible_device(device_id, session, user)
    if device is None:
        return _error_page(request, 404, "There is no such device, or it is not yours to see.", user_context)
    if kind not in COMMAND_KINDS:
        return _error_page(request, 400, "Unknown command.", user_context)
    try:
        devices_api.queue_command(
            body=CommandIn(kind=kind),  # type: ignore[arg-type]
            device=device,
            user=user,
            session=session,
            now=now,
            address=address,
        )
    except HTTPException as exc:
        return _error_page(request, exc.status_code, f"{str(exc.detail).capitalize()}.", user_context)
    return RedirectResponse(f"/devices/{device.id}#commands", status.HTTP_303_SEE_OTHER)


@router.post("/devices/{device_id}/customer")
def device_assign(
    request: Request,
    device_id: str,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    address: ClientAddress,
    customer: Annotated[str, Form()] = "",
    unassign: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """Assign the device to a customer, or unassign it, through the API (admins only), then show it."""
    user_context = _user_context(request, session, settings, user)
    if _csrf_refused(request, settings, csrf_token):
        return _error_page(request, 403, FORM_EXPIRED, user_context)
    device = _visible_device(device_id, session, user)
    if device is None:
        return _error_page(request, 404, "There is no such device, or it is not yours to see.", user_context)
    try:
        require_admin(user)
        body = DeviceCustomerIn(customer=None if unassign else customer)
    except HTTPException:
        return _error_page(request, 403, "Only admins assign devices to customers.", user_context)
    except ValidationError as exc:
        reason = exc.errors()[0].get("msg", "not a customer name").removeprefix("Value error, ")
        return _error_page(request, 400, f"Customer name: {reason}.", user_context)
    try:
        devices_api.assign_customer(
            body=body, device_id=device.id, admin=user, session=session, now=now, address=address
        )
    except HTTPException as exc:
        return _error_page(request, exc.status_code, f"{str(exc.detail).capitalize()}.", user_context)
    return RedirectResponse(f"/devices/{device.id}#identity", status.HTTP_303_SEE_OTHER)


# ---------------------------------------------------------------- audit


@router.get("/audit")
def audit_view(
    request: Request,
    user: WebUser,
    session: SessionDep,
    settings: SettingsDep,
    page: str | None = None,
    action: str | None = None,
    actor: str | None = None,
) -> Response:
    """The audit log, newest first, a page at a time (admins only)."""
    user_context = _user_context(request, session, settings, user)
    try:
        require_admin(user)
    except HTTPException:
        return _error_page(request, 403, "The audit log is for admins only.", user_context)
    number = page_number(page)
    filters = {"action": query_text(action), "actor": query_text(actor)}
    listed = audit_api.list_audit(
        _admin=user,
        session=session,
        action=filters["action"],
        actor=filters["actor"],
        limit=AUDIT_EVENTS_PER_PAGE + 1,
        offset=(number - 1) * AUDIT_EVENTS_PER_PAGE,
    )
    active = {k: v for k, v in filters.items() if v}
    has_next = len(listed.events) > AUDIT_EVENTS_PER_PAGE
    context = {
        **user_context,
        "events": listed.events[:AUDIT_EVENTS_PER_PAGE],
        "filters": filters,
        "page": number,
        "prev_url": "/audit?" + urlencode({**active, "page": number - 1}) if number > 1 else None,
        "next_url": "/audit?" + urlencode({**active, "page": number + 1}) if has_next else None,
    }
    return render(request, "audit.html", context)
