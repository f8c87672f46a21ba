"""Credentials: scrypt password hashes, bearer tokens, session tokens, login throttling.

The login limiter keeps its state in the ``login_failures`` table, so it holds across restarts
and is shared by every server process. It never locks a user out from everywhere: failures are
counted per (name, address) and per address, which block with 429; failures of one name across
addresses only slow every answer for that name down, right or wrong.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from server.models import NAME_MAX_CHARS, LoginFailure

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_SALT_BYTES = 16
SCRYPT_KEY_BYTES = 32
SCRYPT_MAXMEM_BYTES = 64 * 1024 * 1024
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_CHARS = 1024

DEVICE_TOKEN_PREFIX = "tmd_"  # noqa: S105 (a prefix, not a secret)
USER_TOKEN_PREFIX = "tmu_"  # noqa: S105
SESSION_TOKEN_PREFIX = "tms_"  # noqa: S105
TOKEN_RANDOM_BYTES = 32

SESSION_COOKIE_NAME = "telemaint_session"

# The answer for a name with many failures (from any address) waits this long at first,
# doubling with each further failure up to the cap.
LOGIN_DELAY_FIRST_S = 0.5
LOGIN_DELAY_MAX_S = 4.0
LOGIN_ADDRESS_MAX_CHARS = 64
UNKNOWN_ADDRESS = "unknown"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def password_problem(password: str) -> str | None:
    """Return why ``password`` cannot be a new password, or None when it can."""
    if len(password) < PASSWORD_MIN_CHARS:
        return f"the password must have at least {PASSWORD_MIN_CHARS} characters"
    if len(password) > PASSWORD_MAX_CHARS or "\x00" in password:
        return f"the password must be text of at most {PASSWORD_MAX_CHARS} characters"
    return None


def hash_password(password: str) -> str:
    """Return a self-describing scrypt hash: ``scrypt$n=16384,r=8,p=1$SALT$KEY`` (base64url)."""
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    key = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=SCRYPT_MAXMEM_BYTES,
        dklen=SCRYPT_KEY_BYTES,
    )
    return f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Return True when ``password`` matches ``stored`` (from :func:`hash_password`).

    A malformed stored hash never matches.
    """
    try:
        scheme, params_text, salt_text, key_text = stored.split("$")
        if scheme != "scrypt":
            return False
        params = dict(item.split("=", 1) for item in params_text.split(","))
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
        salt, expected = _unb64(salt_text), _unb64(key_text)
        key = hashlib.scrypt(
            password.encode("utf-8"),
            salt=salt,
            n=n,
            r=r,
            p=p,
            maxmem=SCRYPT_MAXMEM_BYTES,
            dklen=len(expected),
        )
    except (ValueError, KeyError):
        return False
    return hmac.compare_digest(key, expected)


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def burn_password_check(password: str) -> None:
    """Spend the time of one password check, so an unknown user name answers as slowly."""
    verify_password(password, _dummy_hash())


def new_token(prefix: str) -> str:
    """Return a new random bearer token such as ``tmd_...`` (256 bits of randomness)."""
    return prefix + secrets.token_urlsafe(TOKEN_RANDOM_BYTES)


def hash_token(token: str) -> str:
    """Return the sha256 hex digest under which a token or enrollment code is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer TOKEN`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


@dataclass(frozen=True)
class LoginVerdict:
    """What the limiter says before a login is checked.

    ``retry_after_s`` > 0: refuse with 429 and ``Retry-After``; otherwise answer after
    ``delay_s`` seconds, whatever the outcome.
    """

    retry_after_s: int
    delay_s: float


def _limiter_name(name: str) -> str:
    return name.strip().lower()[:NAME_MAX_CHARS]


def _limiter_address(address: str | None) -> str:
    return (address or UNKNOWN_ADDRESS)[:LOGIN_ADDRESS_MAX_CHARS]


def login_delay_s(name_failures: int, max_failures: int) -> float:
    """Return how long to hold the answer for a name with ``name_failures`` recent failures.

    Nothing below ``max_failures``; then :data:`LOGIN_DELAY_FIRST_S`, doubling per further
    failure, at most :data:`LOGIN_DELAY_MAX_S`.
    """
    if name_failures < max_failures:
        return 0.0
    return min(LOGIN_DELAY_MAX_S, LOGIN_DELAY_FIRST_S * 2 ** min(name_failures - max_failures, 16))


def _blocked_until(
    session: Session, where: list[ColumnElement[bool]], max_failures: int, since: datetime
) -> datetime | None:
    """Return when the ``max_failures``-th newest failure matching ``where`` leaves the window."""
    query = (
        select(LoginFailure.at)
        .where(*where, LoginFailure.at > since)
        .order_by(LoginFailure.at.desc())
        .offset(max_failures - 1)
        .limit(1)
    )
    return session.scalar(query)


def check_login_limits(
    session: Session,
    *,
    name: str,
    address: str | None,
    now: datetime,
    window_s: float,
    max_failures: int,
    address_max_failures: int,
) -> LoginVerdict:
    """Return the limiter's verdict for a login of ``name`` from ``address`` at ``now``.

    Blocks when ``max_failures`` failures of this name from this address, or
    ``address_max_failures`` failures of any names from this address, fall within the window.
    """
    window = timedelta(seconds=window_s)
    since = now - window
    key_name, key_address = _limiter_name(name), _limiter_address(address)
    blocked = [
        _blocked_until(
            session, [LoginFailure.name == key_name, LoginFailure.address == key_address], max_failures, since
        ),
        _blocked_until(session, [LoginFailure.address == key_address], address_max_failures, since),
    ]
    until = max((moment + window for moment in blocked if moment is not None), default=None)
    if until is not None and until > now:
        return LoginVerdict(retry_after_s=max(1, int((until - now).total_seconds() + 0.999)), delay_s=0.0)
    name_failures = session.scalar(
        select(func.count()).select_from(LoginFailure).where(LoginFailure.name == key_name, LoginFailure.at > since)
    )
    return LoginVerdict(retry_after_s=0, delay_s=login_delay_s(name_failures or 0, max_failures))


def record_login_failure(session: Session, *, name: str, address: str | None, now: datetime, window_s: float) -> None:
    """Add one failed login to ``session`` and delete failures older than the window (the caller commits)."""
    session.execute(delete(LoginFailure).where(LoginFailure.at <= now - timedelta(seconds=window_s)))
    session.add(LoginFailure(name=_limiter_name(name), address=_limiter_address(address), at=now))


def clear_login_failures(session: Session, *, name: str, address: str | None) -> None:
    """Forget the failures of ``name`` from ``address`` (the caller commits); others stay."""
    session.execute(
        delete(LoginFailure).where(
            LoginFailure.name == _limiter_name(name), LoginFailure.address == _limiter_address(address)
        )
    )
