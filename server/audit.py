"""The append-only audit log: logins, enrollments, commands, downloads, user changes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from server.models import NAME_MAX_CHARS, AuditEvent

ADDRESS_MAX_CHARS = 64
TARGET_MAX_CHARS = 255


def record_audit(
    session: Session,
    *,
    at: datetime,
    actor: str,
    action: str,
    target: str = "",
    details: dict[str, Any] | None = None,
    address: str | None = None,
) -> AuditEvent:
    """Add one audit event to ``session`` (the caller commits) and return it.

    Actions in use: ``login.ok``, ``login.failed``, ``logout``, ``session.end``,
    ``device.enroll``, ``enrollment.refused``, ``enrollment_code.create``, ``device.assign``,
    ``device.budget_exceeded``, ``command.queue``, ``user.add``, ``user.password``,
    ``user.disable``, ``user.enable``, ``api_token.create``, ``api_token.revoke``.
    """
    event = AuditEvent(
        at=at,
        actor=actor[:NAME_MAX_CHARS],
        action=action,
        target=target[:TARGET_MAX_CHARS],
        details=details or {},
        address=address[:ADDRESS_MAX_CHARS] if address else None,
    )
    session.add(event)
    return event
