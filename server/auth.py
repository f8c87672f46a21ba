"""Credentials: scrypt password hashes, bearer tokens, signed session cookies, login throttling."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

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
TOKEN_RANDOM_BYTES = 32

SESSION_COOKIE_NAME = "telemaint_session"

_RATE_LIMITER_MAX_KEYS = 100_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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


def password_fingerprint(password_hash: str) -> str:
    """Return a short digest of a password hash; a session cookie dies when the password changes."""
    return hashlib.sha256(password_hash.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class SessionClaims:
    """What a session cookie says: which user, with which password, until when."""

    user_id: int
    password_fingerprint: str
    expires_at_s: int


def _cookie_key(secret_key: str) -> bytes:
    return hmac.new(secret_key.encode("utf-8"), b"telemaint session cookie", "sha256").digest()


def sign_session(secret_key: str, claims: SessionClaims) -> str:
    """Return the cookie value ``PAYLOAD.SIGNATURE`` (HMAC-SHA256) for ``claims``."""
    payload = _b64(
        json.dumps(
            {"u": claims.user_id, "p": claims.password_fingerprint, "e": claims.expires_at_s},
            separators=(",", ":"),
        ).encode("utf-8")
    )
    signature = _b64(hmac.new(_cookie_key(secret_key), payload.encode("ascii"), "sha256").digest())
    return f"{payload}.{signature}"


def verify_session(secret_key: str, value: str, now_s: float) -> SessionClaims | None:
    """Return the claims of a cookie value that is authentic and unexpired, else None."""
    payload, _, signature = value.partition(".")
    if not payload or not signature:
        return None
    expected = _b64(hmac.new(_cookie_key(secret_key), payload.encode("ascii"), "sha256").digest())
    if not hmac.compare_digest(signature.encode("ascii"), expected.encode("ascii")):
        return None
    try:
        data = json.loads(_unb64(payload))
        claims = SessionClaims(int(data["u"]), str(data["p"]), int(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    return claims if claims.expires_at_s > now_s else None


class LoginRateLimiter:
    """Counts failed logins per user name and per client address, in this process's memory.

    After ``max_failures`` failures within ``window_s`` for a name or an address, further
    attempts are refused until the oldest failure leaves the window. State is lost on restart
    and not shared between worker processes (the server runs one).
    """

    def __init__(
        self,
        max_failures: int,
        window_s: float,
        clock_s: Callable[[], float] = time.monotonic,
    ):
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock_s = clock_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _keys(name: str, address: str | None) -> list[tuple[str, str]]:
        keys = [("name", name.strip().lower())]
        if address:
            keys.append(("address", address))
        return keys

    def _prune(self, key: tuple[str, str], now_s: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now_s - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after_s(self, name: str, address: str | None) -> int:
        """Return 0 when a login attempt may proceed, else the seconds until it may."""
        now_s = self._clock_s()
        wait_s = 0.0
        with self._lock:
            for key in self._keys(name, address):
                times = self._prune(key, now_s)
                if times is not None and len(times) >= self.max_failures:
                    wait_s = max(wait_s, times[0] + self.window_s - now_s)
        return max(1, int(wait_s + 0.999)) if wait_s > 0 else 0

    def record_failure(self, name: str, address: str | None) -> None:
        """Count one failed attempt against the name and the address."""
        now_s = self._clock_s()
        with self._lock:
            if len(self._failures) >= _RATE_LIMITER_MAX_KEYS:
                for key in list(self._failures):
                    self._prune(key, now_s)
            for key in self._keys(name, address):
                times = self._failures.setdefault(key, deque())
                times.append(now_s)
                while len(times) > self.max_failures:
                    times.popleft()

    def record_success(self, name: str) -> None:
        """Forget the failures of ``name`` (the address keeps its count)."""
        with self._lock:
            self._failures.pop(("name", name.strip().lower()), None)
