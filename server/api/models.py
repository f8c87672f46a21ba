"""Wire models of ``/api/v1``: what agents and support tools send and get back.

This module is the written-down wire format shared by the server and the agent's tests.
Inbound models reject unknown shapes with 422; report payloads are kept as sent and read
leniently (:class:`InventoryPayload`, :class:`HealthPayload`), so a skipped collector or a
newer agent with extra fields never makes a report undeliverable.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from server.auth import password_problem
from server.clock import as_utc
from server.names import check_name

MAX_REPORTS_PER_BATCH = 500
MAX_MESSAGE_CHARS = 64 * 1024
SSH_ED25519_KEY_BYTES = 32
JSON_MAX_DEPTH = 64

ReportKind = Literal["heartbeat", "inventory", "health", "events"]
CommandKind = Literal["run_checks", "collect_inventory"]
CommandStatus = Literal["queued", "sent", "done", "failed"]
UserRole = Literal["admin", "support", "customer"]
HealthStatus = Literal["OK", "WARNING", "CRITICAL", "UNKNOWN"]
DeviceStatus = Literal["online", "late", "offline"]


def _printable(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("control characters are not allowed")
    return _encodable(value)


def _encodable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (lone surrogate)") from None
    return value


def _utc(value: datetime) -> datetime:
    try:
        return as_utc(value)
    except OverflowError:
        raise ValueError("not a representable time: outside the years 1 to 9999 in UTC") from None


_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _valid_unicode(text: str) -> str:
    return _LONE_SURROGATE_RE.sub("\ufffd", text)


def _repair_strings(node: Any) -> Any:
    if isinstance(node, str):
        return _valid_unicode(node)
    if isinstance(node, dict):
        return {_valid_unicode(k): _repair_strings(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_repair_strings(child) for child in node]
    return node


def _clean_json(value: dict[str, Any]) -> dict[str, Any]:
    """Refuse nesting deeper than JSON_MAX_DEPTH and NaN or Infinity; replace lone surrogates (from undecodable
    bytes on the agent) with U+FFFD so that the stored payload can always be served again."""
    needs_repair = False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > JSON_MAX_DEPTH:
            raise ValueError(f"nested deeper than {JSON_MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
            if not needs_repair:
                stack.extend((key, depth) for key in node)
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ValueError("NaN and Infinity are not JSON numbers")
        elif isinstance(node, str) and not needs_repair and not node.isascii():
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                needs_repair = True
    return _repair_strings(value) if needs_repair else value


# Names shown to support: no control, bidirectional or invisible characters (server.names).
Label = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_printable),
    AfterValidator(check_name),
]
OptionalLabel = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=200),
    AfterValidator(_printable),
    AfterValidator(check_name),
]


def _plain_serial(value: str) -> str:
    if unicodedata.normalize("NFKC", value) != value:
        raise ValueError("use plain characters: fullwidth or compatibility forms would look like another serial")
    return value


Serial = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=128),
    AfterValidator(_printable),
    AfterValidator(check_name),
    AfterValidator(_plain_serial),
]
AgentVersion = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_printable),
]
Message = Annotated[str, StringConstraints(max_length=MAX_MESSAGE_CHARS), AfterValidator(_encodable)]
QueryText = Annotated[str, StringConstraints(max_length=200), AfterValidator(_printable)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_clean_json)]


class WireModel(BaseModel):
    """Inbound models refuse fields they do not know."""

    model_config = ConfigDict(extra="forbid")


def parse_ssh_ed25519_public_key(text: str) -> str:
    """Return ``ssh-ed25519 BASE64`` for an OpenSSH Ed25519 public key line (comment dropped).

    Raises ValueError when the line is not one well-formed Ed25519 key.
    """
    parts = text.strip().split()
    if len(parts) < 2 or parts[0] != "ssh-ed25519":
        raise ValueError('expected an OpenSSH Ed25519 public key: "ssh-ed25519 AAAA..."')
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key's base64 part is not valid base64") from None
    try:
        (type_len,) = struct.unpack(">I", blob[:4])
        key_type = blob[4 : 4 + type_len]
        (key_len,) = struct.unpack(">I", blob[4 + type_len : 8 + type_len])
        key = blob[8 + type_len :]
    except struct.error:
        raise ValueError("the key blob is truncated") from None
    if key_type != b"ssh-ed25519" or key_len != SSH_ED25519_KEY_BYTES or len(key) != key_len:
        raise ValueError("the key blob is not an Ed25519 public key")
    return f"ssh-ed25519 {parts[1]}"


# ---------------------------------------------------------------- enrollment


#
# A serial that is not enrolled yet enrolls with a valid code alone. A serial that is enrolled
# needs more: a code an admin issued for that device (``enrollment-code --device ID``), or proof
# that the machine holds the device's current Ed25519 key. Without ``proof`` the server answers
# 409 with an :class:`EnrollChallengeOut` (the code stays unused); the machine signs
# :func:`enrollment_proof_message` of that challenge, its serial and the key it registers with
# its current private key, and sends the same body again with ``proof``. A challenge expires in
# minutes and dies when the device enrolls again; a code is used once, so a replayed request
# gets no token. Every other refusal is a 403 or 409 whose ``detail`` says why.

ENROLLMENT_PROOF_CONTEXT = b"telemaint enrollment proof v1"
ENROLLMENT_CHALLENGE_MAX_CHARS = 512
ED25519_SIGNATURE_BYTES = 64


def enrollment_proof_message(challenge: str, serial: str, ssh_public_key: str) -> bytes:
    """Return the bytes a machine signs to prove it holds its device's current key.

    One line each, UTF-8, in this order: :data:`ENROLLMENT_PROOF_CONTEXT`, the challenge as
    the server sent it, the serial (surrounding whitespace stripped) and the public key being
    registered as ``ssh-ed25519 BASE64`` (no comment).
    """
    key = " ".join(ssh_public_key.split()[:2])
    lines = (ENROLLMENT_PROOF_CONTEXT, challenge.encode(), serial.strip().encode(), key.encode())
    return b"\n".join(lines) + b"\n"


class EnrollProofIn(WireModel):
    """The answer to a challenge: an Ed25519 signature (standard base64) of
    :func:`enrollment_proof_message`, made with the device's current private key."""

    challenge: Annotated[
        str,
        StringConstraints(min_length=1, max_length=ENROLLMENT_CHALLENGE_MAX_CHARS, pattern=r"^[A-Za-z0-9_.-]+$"),
    ]
    signature: Annotated[str, StringConstraints(min_length=1, max_length=128)]

    @field_validator("signature")
    @classmethod
    def _signature(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the signature is not valid base64") from None
        if len(raw) != ED25519_SIGNATURE_BYTES:
            raise ValueError(f"an Ed25519 signature has {ED25519_SIGNATURE_BYTES} bytes")
        return value


class EnrollIn(WireModel):
    """``POST /enroll``: a machine presents a one-time code and its identity.

    ``customer`` is what the machine says; it never assigns the device (the code's customer
    does, or an admin later) and is kept as the device's claimed customer.
    """

    code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    name: Label
    serial: Serial
    model: OptionalLabel = ""
    customer: Label | None = None
    ssh_public_key: Annotated[str, StringConstraints(max_length=16 * 1024)]
    agent_version: AgentVersion
    proof: EnrollProofIn | None = None

    @field_validator("ssh_public_key")
    @classmethod
    def _ssh_key(cls, value: str) -> str:
        return parse_ssh_ed25519_public_key(value)


class EnrollOut(BaseModel):
    """The device's identity: keep the token secret, it is shown once."""

    device_id: int
    token: str
    heartbeat_interval_s: int


class EnrollRefusedOut(BaseModel):
    """A refused enrollment: ``detail`` says why in one line."""

    detail: str


class EnrollChallengeOut(BaseModel):
    """409 to ``POST /enroll`` of an enrolled serial without proof: sign ``challenge``."""

    detail: str
    device_id: int
    challenge: str
    expires_at: datetime


class DeviceCustomerIn(WireModel):
    """``PUT /devices/{id}/customer``: assign the device to a customer (created when new), or
    ``null`` to leave it unassigned."""

    customer: Label | None


# ---------------------------------------------------------------- reports


REPORT_TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)


def _report_time(value: datetime) -> datetime:
    if _utc(value) < REPORT_TIME_MIN:
        raise ValueError("a report cannot be older than 1970-01-01T00:00:00Z")
    return _utc(value)


ReportTime = Annotated[datetime, AfterValidator(_report_time)]


class ReportIn(WireModel):
    """One report from the agent's outbox; ``id`` makes a resend harmless (per device).

    ``created_at`` is the agent's clock: the server stores and orders by it, but never later
    than the time it received the report (a clock ahead cannot make a report look newer).
    """

    id: uuid.UUID
    kind: ReportKind
    created_at: ReportTime
    payload: JsonObject


class ReportBatchIn(WireModel):
    """``POST /agent/reports``: up to :data:`MAX_REPORTS_PER_BATCH` reports."""

    reports: list[ReportIn] = Field(max_length=MAX_REPORTS_PER_BATCH)


class AckOut(BaseModel):
    """The report ids stored now or before; the agent may delete exactly these."""

    acked: list[uuid.UUID]


class HeartbeatPayload(BaseModel):
    """Payload of a ``heartbeat`` report."""

    model_config = ConfigDict(extra="allow")

    agent_version: str | None = None
    heartbeat_interval_s: int | None = None


class CollectorResult(BaseModel):
    """One collector's part of an inventory (``telemaint inventory --json``)."""

    model_config = ConfigDict(extra="allow")

    status: str | None = None  # "ok" | "skipped" | "failed"
    message: str | None = None
    duration_ms: float | None = None
    data: dict[str, Any] | None = None


class InventoryPayload(BaseModel):
    """Payload of an ``inventory`` report; every part may be missing."""

    model_config = ConfigDict(extra="allow")

    agent_version: str | None = None
    generated_at: str | None = None
    device: dict[str, Any] | None = None
    collectors: dict[str, CollectorResult | None] = Field(default_factory=dict)


class HealthCheckResult(BaseModel):
    """One check of a health report (``telemaint check --json``)."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    type: str | None = None
    status: str | None = None
    exit_code: int | None = None
    message: str | None = None
    value: Any = None
    unit: str | None = None
    perfdata: Any = None
    duration_ms: float | None = None


class HealthPayload(BaseModel):
    """Payload of a ``health`` report."""

    model_config = ConfigDict(extra="allow")

    generated_at: str | None = None
    status: str | None = None
    exit_code: int | None = None
    checks: list[HealthCheckResult] = Field(default_factory=list)


class ReportSummary(BaseModel):
    """A stored report without its payload: ``size`` is the payload's bytes as JSON;
    ``created_at`` is the agent's time, never later than ``received_at``."""

    id: uuid.UUID
    kind: ReportKind
    created_at: datetime
    received_at: datetime
    size: int


class ReportOut(ReportSummary):
    """One stored report with its payload, as support tools see it."""

    payload: dict[str, Any]


class ReportListOut(BaseModel):
    """A page of reports, newest first; ``next_offset`` asks for the next page (None: no more)."""

    reports: list[ReportSummary]
    next_offset: int | None


class DeviceUsageDay(BaseModel):
    """What a device stored on one UTC day (``YYYY-MM-DD``), and what was refused over its budget."""

    model_config = ConfigDict(from_attributes=True)

    day: str
    bytes: int
    reports: int
    refused_bytes: int
    refused_reports: int
    first_refused_at: datetime | None


class DeviceUsageOut(BaseModel):
    """A device's daily storage budget and its usage on the last days, newest first (days
    without reports are left out)."""

    daily_budget_bytes: int
    days: list[DeviceUsageDay]


# ---------------------------------------------------------------- commands


class CommandIn(WireModel):
    """``POST /devices/{id}/commands``: queue one allowlisted command."""

    kind: CommandKind
    args: JsonObject = Field(default_factory=dict)


class AgentCommandOut(BaseModel):
    """A command as the agent receives it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: CommandKind
    created_at: datetime
    args: dict[str, Any]


class AgentCommandListOut(BaseModel):
    commands: list[AgentCommandOut]


class CommandResultIn(WireModel):
    """``POST /agent/commands/{id}/result``: how a command ended."""

    status: Literal["done", "failed"]
    message: Message = ""
    result: JsonObject | None = None


class CommandOut(BaseModel):
    """A command with its state and result, for support tools and as the result ack."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: int
    kind: CommandKind
    args: dict[str, Any]
    status: CommandStatus
    created_by: str
    created_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    message: str | None
    result: dict[str, Any] | None


class CommandListOut(BaseModel):
    commands: list[CommandOut]


# ---------------------------------------------------------------- devices


class DevicePublic(BaseModel):
    """One row of the device list."""

    id: int
    name: str
    serial: str
    model: str
    customer: str | None
    agent_version: str | None
    enrolled_at: datetime
    last_seen_at: datetime | None
    report_interval_s: int
    status: DeviceStatus
    health_status: HealthStatus | None


class DeviceListOut(BaseModel):
    devices: list[DevicePublic]
    total: int


class VersionChangeOut(BaseModel):
    """``key`` went from ``old`` to ``new`` (None: absent) at ``changed_at``."""

    model_config = ConfigDict(from_attributes=True)

    key: str
    old: str | None
    new: str | None
    changed_at: datetime


class DeviceDetail(DevicePublic):
    """One device: identity, latest inventory and health, current versions and their history.

    ``claimed_customer`` is what the machine said at enrollment; only ``customer`` counts.
    """

    ssh_public_key: str
    claimed_customer: str | None
    inventory: dict[str, Any] | None
    inventory_at: datetime | None
    health: dict[str, Any] | None
    health_at: datetime | None
    versions: dict[str, str | None]
    version_history: list[VersionChangeOut]


# ---------------------------------------------------------------- users and audit


class LoginIn(WireModel):
    """``POST /login`` as JSON (a form with the same fields works too)."""

    name: Label
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_encodable)]


class UserPublic(BaseModel):
    id: int
    name: str
    role: UserRole
    customer: str | None


def _new_password(value: str) -> str:
    problem = password_problem(value)
    if problem:
        raise ValueError(problem)
    return _encodable(value)


NewPassword = Annotated[str, AfterValidator(_new_password)]


class UserDetail(UserPublic):
    """A user as admins see it: enabled or not, and how many live sessions and API tokens."""

    created_at: datetime
    disabled_at: datetime | None
    sessions: int
    tokens: int


class UserListOut(BaseModel):
    users: list[UserDetail]


class PasswordIn(WireModel):
    """``PUT /users/{id}/password``: an admin sets another user's password."""

    password: NewPassword


class PasswordChangeIn(WireModel):
    """``PUT /users/me/password``: the user changes their own password, giving the current one."""

    current_password: Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_encodable)]
    new_password: NewPassword


class UserSessionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime
    address: str | None
    user_agent: str | None
    current: bool = False


class UserSessionListOut(BaseModel):
    sessions: list[UserSessionPublic]


class ApiTokenIn(WireModel):
    name: Label = "api"


class ApiTokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


class ApiTokenCreated(ApiTokenPublic):
    """Shown once: the server keeps only the token's hash."""

    token: str


class ApiTokenListOut(BaseModel):
    tokens: list[ApiTokenPublic]


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    address: str | None


class AuditListOut(BaseModel):
    events: list[AuditEventOut]
