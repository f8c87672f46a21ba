"""URL helpers shared by the config and the uplink (standard library only)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def is_loopback_host(host: str) -> bool:
    """Return True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def mask_url(url: str) -> str:
    """Return ``url`` with a password in it replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:{MASK}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
