"""CSRF tokens of the dashboard's forms: an HMAC, under the server secret, of the session cookie.

A token is valid exactly as long as the session it was made for; the login form, which has no
session yet, is bound to a random pre-login cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

CSRF_FIELD = "csrf_token"
LOGIN_NONCE_COOKIE = "telemaint_login"
LOGIN_NONCE_BYTES = 24


def _key(secret_key: str) -> bytes:
    return hmac.new(secret_key.encode("utf-8"), b"telemaint dashboard csrf", hashlib.sha256).digest()


def csrf_token(secret_key: str, bound_to: str) -> str:
    """Return the token that forms of the session (or pre-login nonce) ``bound_to`` carry."""
    return hmac.new(_key(secret_key), bound_to.encode("utf-8"), hashlib.sha256).hexdigest()


def csrf_token_valid(secret_key: str, bound_to: str | None, token: str | None) -> bool:
    """Return True when ``token`` is the token of ``bound_to``; False when either is missing."""
    if not bound_to or not token:
        return False
    return hmac.compare_digest(token.encode("utf-8"), csrf_token(secret_key, bound_to).encode("utf-8"))


def new_login_nonce() -> str:
    """Return a random value for the pre-login cookie."""
    return secrets.token_urlsafe(LOGIN_NONCE_BYTES)
