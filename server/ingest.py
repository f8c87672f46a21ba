"""Storing report batches against the device's daily budget, and deriving the device state and
version history from them.

What the server trusts of a report: its UUID only within the device that sent it, and its
``created_at`` only up to the time it was received (a later one is stored as the receive time, so a
device whose clock runs ahead cannot make a report look newer than the ones after it).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.api.models import HealthPayload, HeartbeatPayload, InventoryPayload, ReportIn
from server.audit import record_audit
from server.db import compact_json
from server.models import (
    HEALTH_STATUSES,
    VERSION_MAX_CHARS,
    Device,
    DeviceState,
    DeviceUsage,
    Report,
    VersionChange,
)

log = logging.getLogger(__name__)

VERSION_VALUE_MAX_CHARS = 500
VERSION_KEY_MAX_CHARS = 255
PACKAGE_DIGEST_SHOWN_CHARS = 16
HEARTBEAT_INTERVAL_RANGE_S = (5, 86400)
COMPONENT_KEY_PREFIX = "component:"
# A report dated further ahead of the server than this says the agent's clock is wrong (logged).
CLOCK_SKEW_S = 300
BUDGET_EXCEEDED_ACTION = "device.budget_exceeded"


class BudgetExceeded(Exception):
    """The device's daily storage budget cannot take a batch.

    ``status_code`` is 413 when the batch alone is larger than the whole budget (it can never be
    stored as one batch) and 429 when today's usage leaves no room for it; ``retry_after_s`` is
    the time until the budget starts again (the next UTC day).
    """

    def __init__(self, message: str, status_code: int, retry_after_s: int):
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s


def usage_day(moment: datetime) -> str:
    """Return the UTC day of ``moment`` as ``YYYY-MM-DD``, the key of ``device_usage``."""
    return moment.astimezone(UTC).date().isoformat()


def seconds_to_next_day(moment: datetime) -> int:
    """Return the whole seconds (at least 1) from ``moment`` to the next UTC midnight."""
    utc = moment.astimezone(UTC)
    midnight = datetime.combine(utc.date() + timedelta(days=1), time(), tzinfo=UTC)
    return max(1, math.ceil((midnight - utc).total_seconds()))


def payload_size(payload: dict[str, Any]) -> int:
    """Return the bytes of ``payload`` as stored (:func:`server.db.compact_json`): what a report
    costs its device's budget."""
    return len(compact_json(payload).encode("utf-8"))


def clean_text(value: Any, max_chars: int) -> str | None:
    """Return ``value`` as text a database column takes (no NUL, at most ``max_chars``), or None.

    Lone surrogates were already replaced when the payload was validated.
    """
    if value is None:
        return None
    return str(value).replace("\x00", "")[:max_chars]


def _dig(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _version_value(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list) or value == "":
        return None
    return clean_text(value, VERSION_VALUE_MAX_CHARS)


def flatten_versions(inventory: dict[str, Any], previous: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """Return the version map of an inventory payload.

    Keys: ``os``, ``kernel``, ``bios``, ``agent``, ``packages`` (count and digest) and
    ``component:<name>`` per vendor component. A part the inventory does not say anything
    about (collector skipped or failed, a component whose version could not be read) keeps its
    value from ``previous``; a component missing from a component list that was read is gone.
    """
    previous = previous or {}
    found: dict[str, str | None] = {}
    unknown: set[str] = set()

    def put(key: str, value: str | None) -> None:
        if value is None:
            unknown.add(key)
        else:
            found[key] = value

    put("agent", _version_value(inventory.get("agent_version")))
    data = _dig(inventory, "collectors", "versions", "data")
    if not isinstance(data, dict):
        data = {}
    os_info = data.get("os")
    os_name = _dig(os_info, "pretty_name")
    if os_name is None and isinstance(os_info, dict):
        parts = [os_info.get("name"), os_info.get("version_id") or os_info.get("version")]
        os_name = " ".join(str(p) for p in parts if p) or None
    put("os", _version_value(os_name))
    put("kernel", _version_value(_dig(data, "kernel", "release")))
    put("bios", _version_value(_dig(data, "dmi", "bios", "version")))
    packages = data.get("packages")
    count = _dig(packages, "count")
    if isinstance(count, int) and not isinstance(count, bool):
        digest = _dig(packages, "digest")
        shown = f"{count} packages"
        if isinstance(digest, str) and digest:
            shown += f" ({digest[:PACKAGE_DIGEST_SHOWN_CHARS]})"
        put("packages", shown)
    else:
        put("packages", None)

    components = data.get("components")
    if isinstance(components, list):
        for component in components:
            name = clean_text(_dig(component, "name"), VERSION_KEY_MAX_CHARS)
            if not name:
                continue
            key = (COMPONENT_KEY_PREFIX + name)[:VERSION_KEY_MAX_CHARS]
            put(key, _version_value(_dig(component, "version")))
    else:
        unknown.update(k for k in previous if k.startswith(COMPONENT_KEY_PREFIX))

    for key in unknown:
        if previous.get(key) is not None:
            found[key] = previous[key]
    return dict(sorted(found.items()))


def diff_versions(old: dict[str, str | None], new: dict[str, str | None]) -> list[tuple[str, str | None, str | None]]:
    """Return ``(key, old, new)`` for every key whose value differs, sorted by key."""
    return [
        (key, old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)
    ]


def worst_health_status(payload: HealthPayload) -> str:
    """Return the report's overall status, or the worst of its checks, or ``UNKNOWN``."""
    if payload.status in HEALTH_STATUSES:
        return payload.status
    statuses = [c.status for c in payload.checks if c.status in HEALTH_STATUSES]
    if not statuses:
        return "UNKNOWN"
    return max(statuses, key=HEALTH_STATUSES.index)


def _is_current(state_at: datetime | None, at: datetime, now: datetime) -> bool:
    """Return True when a report dated ``at`` is at least as new as the state's; a state dated
    after ``now`` (stored before report times were bounded) is not trusted and is superseded."""
    return state_at is None or at >= state_at or state_at > now


def _apply_inventory(
    session: Session, device: Device, state: DeviceState, report: ReportIn, at: datetime, now: datetime
) -> None:
    try:
        parsed = InventoryPayload.model_validate(report.payload)
    except ValidationError as exc:
        log.warning("device %s: inventory %s unreadable: %s", device.id, report.id, exc)
        return
    if parsed.agent_version:
        device.agent_version = clean_text(parsed.agent_version, VERSION_MAX_CHARS)
    if not _is_current(state.inventory_at, at, now):
        return  # an older inventory arriving late changes nothing current
    new_versions = flatten_versions(report.payload, state.versions)
    if state.versions is not None:
        for key, old, new in diff_versions(state.versions, new_versions):
            session.add(VersionChange(device_id=device.id, key=key, old=old, new=new, changed_at=at))
    state.versions = new_versions
    state.inventory = report.payload
    state.inventory_at = at


def _apply_health(device: Device, state: DeviceState, report: ReportIn, at: datetime, now: datetime) -> None:
    if not _is_current(state.health_at, at, now):
        return
    try:
        parsed = HealthPayload.model_validate(report.payload)
    except ValidationError as exc:
        log.warning("device %s: health %s unreadable: %s", device.id, report.id, exc)
        status = "UNKNOWN"
    else:
        status = worst_health_status(parsed)
    state.health = report.payload
    state.health_at = at
    state.health_status = status


def _apply_heartbeat(device: Device, report: ReportIn) -> None:
    try:
        parsed = HeartbeatPayload.model_validate(report.payload)
    except ValidationError:
        return
    if parsed.agent_version:
        device.agent_version = clean_text(parsed.agent_version, VERSION_MAX_CHARS)
    low, high = HEARTBEAT_INTERVAL_RANGE_S
    if parsed.heartbeat_interval_s is not None and low <= parsed.heartbeat_interval_s <= high:
        device.report_interval_s = parsed.heartbeat_interval_s


def _usage_insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert(DeviceUsage)


def _reserve(session: Session, device_id: int, day: str, sizes: Sequence[int], budget: int) -> bool:
    """Add ``sizes`` to the device's usage of ``day`` if the total stays within ``budget``;
    return whether it did. One conditional upsert: the usage row stays locked (PostgreSQL) or
    the database write-locked (SQLite) until the transaction ends, either way, so concurrent
    batches of one device are counted one after the other and cannot together pass the budget."""
    stmt = _usage_insert(session).values(
        device_id=device_id, day=day, bytes=sum(sizes), reports=len(sizes), refused_bytes=0, refused_reports=0
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[DeviceUsage.device_id, DeviceUsage.day],
        set_={"bytes": DeviceUsage.bytes + stmt.excluded.bytes, "reports": DeviceUsage.reports + stmt.excluded.reports},
        where=DeviceUsage.bytes + stmt.excluded.bytes <= budget,
    ).returning(DeviceUsage.bytes)
    return session.execute(stmt).first() is not None


def _refuse(
    session: Session, device: Device, day: str, sizes: Sequence[int], budget: int, now: datetime
) -> BudgetExceeded:
    """Count a refused batch in the usage row (and, the first time that day, in the audit log);
    return the exception to raise. The caller commits."""
    refused_bytes = sum(sizes)
    stmt = _usage_insert(session).values(
        device_id=device.id, day=day, bytes=0, reports=0, refused_bytes=refused_bytes, refused_reports=len(sizes)
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[DeviceUsage.device_id, DeviceUsage.day],
        set_={
            "refused_bytes": DeviceUsage.refused_bytes + stmt.excluded.refused_bytes,
            "refused_reports": DeviceUsage.refused_reports + stmt.excluded.refused_reports,
        },
    ).returning(DeviceUsage.bytes)
    used = int(session.execute(stmt).scalar_one())
    first = session.execute(
        update(DeviceUsage)
        .where(DeviceUsage.device_id == device.id, DeviceUsage.day == day, DeviceUsage.first_refused_at.is_(None))
        .values(first_refused_at=now)
    )
    if first.rowcount:  # type: ignore[attr-defined]
        record_audit(
            session,
            at=now,
            actor=f"device:{device.id}",
            action=BUDGET_EXCEEDED_ACTION,
            target=f"device:{device.id}",
            details={
                "day": day,
                "daily_budget_bytes": budget,
                "stored_bytes": used,
                "refused_bytes": refused_bytes,
                "refused_reports": len(sizes),
            },
        )
        log.warning("device %d: over its daily storage budget of %d bytes on %s", device.id, budget, day)
    retry_after_s = seconds_to_next_day(now)
    if refused_bytes > budget:
        return BudgetExceeded(
            f"a batch of {refused_bytes} bytes is larger than the device's daily storage budget of "
            f"{budget} bytes; send fewer reports at once",
            413,
            retry_after_s,
        )
    return BudgetExceeded(
        f"over the device's daily storage budget: {used} of {budget} bytes stored today (UTC), "
        f"this batch of {refused_bytes} bytes does not fit; retry after 00:00 UTC",
        429,
        retry_after_s,
    )


def _stored_ids(session: Session, device_id: int, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    if not ids:
        return set()
    return set(session.scalars(select(Report.uuid).where(Report.device_id == device_id, Report.uuid.in_(ids))))


def store_reports(
    session: Session, device: Device, reports: Sequence[ReportIn], now: datetime, daily_budget_bytes: int
) -> list[uuid.UUID]:
    """Store the reports this device did not send before and update the device; return the ids
    to ack: every id of the batch, each now stored or stored before for this device.

    A report dated after ``now`` is stored, ordered and applied as received at ``now``. New
    reports update ``device_state`` and ``version_history`` in the order they were created.
    The caller commits, also when this raises :class:`BudgetExceeded` (the refusal is counted
    in ``device_usage``; nothing of the batch is stored). On an IntegrityError the caller rolls
    back and calls again.
    """
    day = usage_day(now)
    unique = {r.id: r for r in reports}
    size_of = {report_id: payload_size(r.payload) for report_id, r in unique.items()}
    stored = _stored_ids(session, device.id, list(unique))
    fresh = [r for r in unique.values() if r.id not in stored]
    if device.last_seen_at is None or device.last_seen_at < now:
        device.last_seen_at = now  # after the read: on SQLite the first write takes the lock
    if not fresh:
        return list(unique)
    sizes = [size_of[r.id] for r in fresh]
    if sum(sizes) > daily_budget_bytes or not _reserve(session, device.id, day, sizes, daily_budget_bytes):
        # Over budget, or a concurrent batch stored some of these first: look again, now that
        # this device's usage is locked.
        stored = _stored_ids(session, device.id, [r.id for r in fresh])
        fresh = [r for r in fresh if r.id not in stored]
        if not fresh:
            return list(unique)
        sizes = [size_of[r.id] for r in fresh]
        if sum(sizes) > daily_budget_bytes or not _reserve(session, device.id, day, sizes, daily_budget_bytes):
            raise _refuse(session, device, day, sizes, daily_budget_bytes, now)
    dated = sorted(
        ((min(r.created_at, now), r, size) for r, size in zip(fresh, sizes, strict=True)), key=lambda item: item[0]
    )
    ahead = [r for r in fresh if r.created_at > now + timedelta(seconds=CLOCK_SKEW_S)]
    if ahead:
        log.warning(
            "device %d: %d report(s) dated up to %s, ahead of the server's %s; stored as received",
            device.id,
            len(ahead),
            max(r.created_at for r in ahead).isoformat(),
            now.isoformat(),
        )
    session.execute(
        insert(Report),
        [
            {
                "uuid": r.id,
                "device_id": device.id,
                "kind": r.kind,
                "created_at": at,
                "received_at": now,
                "payload": r.payload,
                "size": size,
            }
            for at, r, size in dated
        ],
    )
    state = session.get(DeviceState, device.id)
    if state is None:
        state = DeviceState(device_id=device.id)
        session.add(state)
    for at, report, _size in dated:
        if report.kind == "inventory":
            _apply_inventory(session, device, state, report, at, now)
        elif report.kind == "health":
            _apply_health(device, state, report, at, now)
        elif report.kind == "heartbeat":
            _apply_heartbeat(device, report)
    return list(unique)


def usage_days(session: Session, device_id: int, days: int) -> list[DeviceUsage]:
    """Return the device's usage rows of its last ``days`` days with reports, newest first."""
    return list(
        session.scalars(
            select(DeviceUsage).where(DeviceUsage.device_id == device_id).order_by(DeviceUsage.day.desc()).limit(days)
        )
    )
