"""Small queries the dashboard needs that the API has no endpoint for."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import Customer, Report

# What the health history of one device page may load of report payloads, in all.
HEALTH_HISTORY_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class HealthSample:
    """One health report of the history: ``payload`` is None when it was too large to load."""

    created_at: datetime
    payload: dict[str, Any] | None


def customer_names(session: Session) -> list[str]:
    """Return the names of all customers, sorted, for the device list's customer filter."""
    return list(session.scalars(select(Customer.name).order_by(Customer.name)))


def health_samples(
    session: Session, device_id: int, limit: int, max_bytes: int = HEALTH_HISTORY_MAX_BYTES
) -> list[HealthSample]:
    """Return the device's latest ``limit`` health reports, newest first, loading payloads
    newest first while they fit in ``max_bytes`` together; the others come without one."""
    rows = session.execute(
        select(Report.id, Report.created_at, Report.size)
        .where(Report.device_id == device_id, Report.kind == "health")
        .order_by(Report.created_at.desc(), Report.id.desc())
        .limit(limit)
    ).all()
    chosen: list[int] = []
    total = 0
    for row in rows:
        if total + row.size <= max_bytes:
            chosen.append(row.id)
            total += row.size
    payloads: dict[int, dict[str, Any]] = {}
    if chosen:
        rows_with_payload = session.execute(select(Report.id, Report.payload).where(Report.id.in_(chosen)))
        payloads = {report_id: payload for report_id, payload in rows_with_payload}
    return [HealthSample(created_at=row.created_at, payload=payloads.get(row.id)) for row in rows]
