"""Tables of the central server.

The models describe the newest schema. A database made by an older version is brought up to
date by :mod:`server.migrations`; any change here needs a migration there.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    event,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from server.db import Base

# SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAME_MAX_CHARS = 200
MAX_ROW_ID = 2**31 - 1  # the largest id an INTEGER key holds on PostgreSQL
SERIAL_MAX_CHARS = 128
VERSION_MAX_CHARS = 64
SSH_KEY_MAX_CHARS = 200

REPORT_KINDS = ("heartbeat", "inventory", "health", "events")
COMMAND_KINDS = ("run_checks", "collect_inventory")
COMMAND_STATUSES = ("queued", "sent", "done", "failed")
USER_ROLES = ("admin", "support", "customer")
HEALTH_STATUSES = ("OK", "WARNING", "UNKNOWN", "CRITICAL")  # from best to worst


class Customer(Base):
    """A company that runs equipment under a maintenance contract."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), unique=True)
    created_at: Mapped[datetime]


class Device(Base):
    """An enrolled machine; re-enrolling its serial updates this row."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))
    serial: Mapped[str] = mapped_column(String(SERIAL_MAX_CHARS), unique=True)
    model: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), default="")
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    agent_version: Mapped[str | None] = mapped_column(String(VERSION_MAX_CHARS))
    enrolled_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    report_interval_s: Mapped[int]
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    ssh_public_key: Mapped[str] = mapped_column(String(SSH_KEY_MAX_CHARS))
    # What the machine said its customer was; only an admin assigns ``customer_id`` from it.
    claimed_customer: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS))


class EnrollmentCode(Base):
    """A one-time code that lets one machine enroll before ``expires_at``."""

    __tablename__ = "enrollment_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    created_by: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="SET NULL"))
    # Issued by an admin for re-enrolling this one device (a reinstall that kept nothing).
    for_device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"))


class Report(Base):
    """One report as the agent sent it; ``(device_id, uuid)`` makes a resend harmless."""

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("device_id", "uuid"),
        Index("ix_reports_device_kind_created", "device_id", "kind", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    uuid: Mapped[uuid.UUID] = mapped_column(Uuid())
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]  # the agent's clock, never later than received_at
    received_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
    size: Mapped[int] = mapped_column(Integer, server_default="0")  # bytes of the payload as JSON


class DeviceState(Base):
    """The latest inventory and health of a device, kept so pages need not scan reports."""

    __tablename__ = "device_state"

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    inventory: Mapped[dict[str, Any] | None]
    inventory_at: Mapped[datetime | None]
    versions: Mapped[dict[str, Any] | None]  # flattened version map of that inventory
    health: Mapped[dict[str, Any] | None]
    health_at: Mapped[datetime | None]
    health_status: Mapped[str | None] = mapped_column(String(16), index=True)


class VersionChange(Base):
    """One version that changed between two inventories of a device."""

    __tablename__ = "version_history"
    __table_args__ = (Index("ix_version_history_device_changed", "device_id", "changed_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    old: Mapped[str | None] = mapped_column(Text)
    new: Mapped[str | None] = mapped_column(Text)
    changed_at: Mapped[datetime]


class Command(Base):
    """Work queued for a device from :data:`COMMAND_KINDS`, never a shell command."""

    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_device_status", "device_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    args: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]


class User(Base):
    """A person using the dashboard or the API; ``customer`` viewers see one customer only."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_CHARS), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None]


class UserSession(Base):
    """A dashboard or API login; the cookie carries a random token whose sha256 is stored here.

    Logout deletes the row, so a copied cookie dies with it; a password change or disabling the
    user deletes all the user's rows.
    """

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(NAME_MAX_CHARS))


class LoginFailure(Base):
    """One failed login, kept for the limiter's window; shared by every server process."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_name_at", "name", "at"),
        Index("ix_login_failures_address_at", "address", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))  # lower case
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(index=True)


class DeviceUsage(Base):
    """What one device stored on one UTC day, against its daily storage budget."""

    __tablename__ = "device_usage"

    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD
    bytes: Mapped[int] = mapped_column(BigInteger)
    reports: Mapped[int] = mapped_column(Integer)
    refused_bytes: Mapped[int] = mapped_column(BigInteger)
    refused_reports: Mapped[int] = mapped_column(Integer)
    first_refused_at: Mapped[datetime | None]


class ApiToken(Base):
    """A user's API token (``tmu_...``); only its sha256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]


class AuditEvent(Base):
    """One line of the append-only audit log: who did what to what, from where."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(NAME_MAX_CHARS))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any]]
    address: Mapped[str | None] = mapped_column(String(64))


class AuditLogIsAppendOnly(Exception):
    """Raised when code tries to change or delete an audit event."""


@event.listens_for(Session, "before_flush")
def _refuse_audit_changes(session: Session, _context: Any, _instances: Any) -> None:
    for obj in (*session.dirty, *session.deleted):
        if isinstance(obj, AuditEvent) and (obj in session.deleted or session.is_modified(obj)):
            raise AuditLogIsAppendOnly(f"audit event {obj.id} cannot be changed or deleted")
