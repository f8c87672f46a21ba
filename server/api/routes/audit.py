"""``GET /audit``: the audit log, for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from server.api.deps import AdminUser, SessionDep
from server.api.models import AuditEventOut, AuditListOut, QueryText
from server.models import AuditEvent

AUDIT_PAGE_MAX = 1000
OFFSET_MAX = 10**9

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def list_audit(
    _admin: AdminUser,
    session: SessionDep,
    action: QueryText | None = None,
    actor: QueryText | None = None,
    limit: Annotated[int, Query(ge=1, le=AUDIT_PAGE_MAX)] = 100,
    offset: Annotated[int, Query(ge=0, le=OFFSET_MAX)] = 0,
) -> AuditListOut:
    """Return audit events, newest first, optionally of one action or actor."""
    stmt = select(AuditEvent)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    stmt = stmt.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
    return AuditListOut(events=[AuditEventOut.model_validate(e) for e in session.scalars(stmt)])
