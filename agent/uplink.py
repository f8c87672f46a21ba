"""The agent's only link to the central server (HTTP API v1, requests).

Certificates are verified (system CAs or ``server.ca_file``); plain ``http://`` is refused except
to a loopback address. Every failure becomes an :class:`UplinkError` with one line saying what.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import urlsplit

from agent import __version__
from agent.urls import is_loopback_host, mask_url

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
USER_AGENT = f"telemaint-agent/{__version__}"
MAX_BATCH_REPORTS = 200


class UplinkError(Exception):
    """The server could not be reached or refused a request. ``retryable`` is False when trying
    again cannot help (bad credentials, a rejected request)."""

    def __init__(self, message: str, retryable: bool = True, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


def check_server_url(url: str) -> str:
    """Return ``url`` without a trailing slash; raise UplinkError for anything but https://, or
    http:// to a loopback address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UplinkError(f"{mask_url(url)!r} is not an http(s) URL", retryable=False)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise UplinkError(
            f"refusing plain http:// to {parts.hostname}: use https:// (http is allowed only to loopback)",
            retryable=False,
        )
    return url.rstrip("/")


class Uplink:
    """A session with the server at ``base_url``; ``token`` is the device's bearer token (None
    before enrollment)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        ca_file: str | None = None,
        proxy: str | None = None,
        timeout_s: float = 30.0,
    ):
        import requests

        self.base_url = check_server_url(base_url)
        self.timeout_s = timeout_s
        self._requests = requests
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        # Given per request: requests lets REQUESTS_CA_BUNDLE override a session-level CA file.
        self.verify: str | bool = ca_file or True
        if proxy:
            self.session.proxies = {"http": proxy, "https": proxy}
            self.session.trust_env = False

    def close(self) -> None:
        self.session.close()

    def _request(self, method: str, path: str, json: Any = None) -> Any:
        url = f"{self.base_url}{API_PREFIX}{path}"
        requests = self._requests
        try:
            response = self.session.request(method, url, json=json, timeout=self.timeout_s, verify=self.verify)
        except requests.exceptions.SSLError as exc:
            raise UplinkError(f"TLS verification of {self.base_url} failed: {_reason(exc)}") from None
        except requests.exceptions.Timeout:
            raise UplinkError(f"no answer from {self.base_url} within {self.timeout_s:g}s") from None
        except requests.exceptions.ProxyError as exc:
            raise UplinkError(f"proxy refused the connection to {self.base_url}: {_reason(exc)}") from None
        except requests.exceptions.ConnectionError as exc:
            raise UplinkError(f"cannot reach {self.base_url}: {_reason(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise UplinkError(f"request to {self.base_url} failed: {exc}") from None
        if response.status_code >= 400:
            detail = _detail(response)
            retryable = response.status_code >= 500 or response.status_code in (408, 429)
            raise UplinkError(
                f"server answered {response.status_code} to {method} {path}: {detail}",
                retryable=retryable,
                status=response.status_code,
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise UplinkError(f"server sent a reply that is not JSON to {method} {path}") from None

    def enroll(self, code: str, device: dict[str, Any], ssh_public_key: str) -> dict[str, Any]:
        """Enroll with a one-time ``code``; return ``{device_id, token, heartbeat_interval_s}``."""
        known = {key: value for key, value in device.items() if value is not None}
        body = {**known, "code": code, "ssh_public_key": ssh_public_key, "agent_version": __version__}
        reply = self._request("POST", "/enroll", body)
        if not isinstance(reply, dict) or "device_id" not in reply or "token" not in reply:
            raise UplinkError("the server's enrollment reply lacks device_id or token", retryable=False)
        return reply

    def send_reports(self, reports: list[dict[str, Any]]) -> list[str]:
        """Post a batch of reports; return the UUIDs the server acknowledged."""
        reply = self._request("POST", "/agent/reports", {"reports": reports})
        return list(reply.get("acked", [])) if isinstance(reply, dict) else []

    def fetch_commands(self) -> list[dict[str, Any]]:
        """Return the commands the server queued for this device."""
        reply = self._request("GET", "/agent/commands")
        return list(reply.get("commands", [])) if isinstance(reply, dict) else []

    def send_command_result(self, command_id: Any, status: str, message: str, result: Any = None) -> None:
        self._request(
            "POST", f"/agent/commands/{command_id}/result", {"status": status, "message": message, "result": result}
        )


def _reason(exc: Exception) -> str:
    """Return the innermost useful reason of a requests exception (e.g. 'Connection refused')."""
    text = str(exc)
    for marker in ("Errno", "certificate verify failed", "Name or service not known", "timed out"):
        index = text.find(marker)
        if index >= 0:
            reason = text[index:].split("'))")[0].split("))")[0]
            reason = re.sub(r"^Errno -?\d+\]\s*", "", reason)
            return re.sub(r"\s*\(_ssl\.c:\d+\)?$", "", reason).rstrip(")'\"")
    return text[:200]


def _detail(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason or "").strip()[:200]
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, list):  # FastAPI validation errors
            return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" for d in detail)[:300]
        return str(detail)[:300]
    return str(body)[:200]
