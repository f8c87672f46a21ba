"""The agent's only link to the central server (HTTP API v1, requests).

Certificates are verified (system CAs or ``server.ca_file``); plain ``http://`` is refused except
to a loopback address. Every failure becomes an :class:`UplinkError` with one line saying what.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from agent import __version__
from agent.urls import is_loopback_host, mask_url

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
USER_AGENT = f"telemaint-agent/{__version__}"
MAX_BATCH_REPORTS = 200
ENROLLMENT_PROOF_CONTEXT = b"telemaint enrollment proof v1"


class UplinkError(Exception):
    """The server could not be reached or refused a request. ``retryable`` is False when trying
    again cannot help (bad credentials, a rejected request)."""

    def __init__(self, message: str, retryable: bool = True, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.body = body  # the server's JSON answer to a refused request, if it sent one


def enrollment_proof_message(challenge: str, serial: str, ssh_public_key: str) -> bytes:
    """Return the bytes the device key signs to answer an enrollment challenge: one line each of
    a context, the challenge, the serial and the public key being registered (the format of
    ``server/api/models.py``, ``enrollment_proof_message``)."""
    key = " ".join(ssh_public_key.split()[:2])
    lines = (ENROLLMENT_PROOF_CONTEXT, challenge.encode(), serial.strip().encode(), key.encode())
    return b"\n".join(lines) + b"\n"


def _device_code_hint(device_id: Any) -> str:
    return (
        "; if this machine was reinstalled without its state, ask the vendor for a code issued for "
        f"device {device_id} (telemaint-server enrollment-code --device {device_id})"
    )


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
                body=_json_or_none(response),
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise UplinkError(f"server sent a reply that is not JSON to {method} {path}") from None

    def enroll(
        self,
        code: str,
        device: dict[str, Any],
        ssh_public_key: str,
        sign: Callable[[bytes], bytes] | None = None,
    ) -> dict[str, Any]:
        """Enroll with a one-time ``code``; return ``{device_id, token, heartbeat_interval_s}``.

        When the serial is enrolled already, the server answers with a challenge; ``sign`` (the
        device key's signing function) answers it, proving that this is the same machine. Raises
        UplinkError; a refusal of that proof says which device-bound code to ask the vendor for.
        """
        known = {key: value for key, value in device.items() if value is not None}
        body = {**known, "code": code, "ssh_public_key": ssh_public_key, "agent_version": __version__}
        try:
            reply = self._request("POST", "/enroll", body)
        except UplinkError as exc:
            challenge = exc.body.get("challenge") if exc.status == 409 and isinstance(exc.body, dict) else None
            if not isinstance(challenge, str) or sign is None:
                raise
            reply = self._prove_and_enroll(body, challenge, exc, sign)
        if not isinstance(reply, dict) or "device_id" not in reply or "token" not in reply:
            raise UplinkError("the server's enrollment reply lacks device_id or token", retryable=False)
        return reply

    def _prove_and_enroll(
        self, body: dict[str, Any], challenge: str, asked: UplinkError, sign: Callable[[bytes], bytes]
    ) -> Any:
        """Answer the challenge of the 409 ``asked`` with ``sign`` and enroll again; return the reply."""
        device_id = asked.body.get("device_id")
        logger.info(
            "serial %s is enrolled as device %s; answering the challenge with the device key",
            body.get("serial"),
            device_id,
        )
        try:
            signature = sign(enrollment_proof_message(challenge, str(body.get("serial", "")), body["ssh_public_key"]))
        except (OSError, ValueError) as exc:
            raise UplinkError(
                f"{asked}; cannot sign with the device key: {exc}{_device_code_hint(device_id)}",
                retryable=False,
                status=asked.status,
            ) from None
        proof = {"challenge": challenge, "signature": base64.b64encode(signature).decode("ascii")}
        try:
            return self._request("POST", "/enroll", {**body, "proof": proof})
        except UplinkError as exc:
            if exc.status not in (403, 409):
                raise
            raise UplinkError(
                f"{exc}{_device_code_hint(device_id)}", retryable=False, status=exc.status, body=exc.body
            ) from None

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


def _json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


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
