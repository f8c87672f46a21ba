"""Storing report batches and deriving the device state and version history from them."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from server.api.models import HealthPayload, HeartbeatPayload, InventoryPayload, ReportIn
from server.models import (
    HEALTH_STATUSES,
    VERSION_MAX_CHARS,
    Device,
    DeviceState,
    Report,
    VersionChange,
)

log = logging.getLogger(__name__)

VERSION_VALUE_MAX_CHARS = 500
VERSION_KEY_MAX_CHARS = 255
PACKAGE_DIGEST_SHOWN_CHARS = 16
HEARTBEAT_INTERVAL_RANGE_S = (5, 86400)
COMPONENT_KEY_PREFIX = "component:"


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


def _apply_inventory(session: Session, device: Device, state: DeviceState, report: ReportIn) -> None:
    try:
        parsed = InventoryPayload.model_validate(report.payload)
    except ValidationError as exc:
        log.warning("device %s: inventory %s unreadable: %s", device.id, report.id, exc)
        return
    if parsed.agent_version:
        device.agent_version = clean_text(parsed.agent_version, VERSION_MAX_CHARS)
    if state.inventory_at is not None and report.created_at < state.inventory_at:
        return  # an older inventory arriving late changes nothing current
    new_versions = flatten_versions(report.payload, state.versions)
    if state.versions is not None:
        for key, old, new in diff_versions(state.versions, new_versions):
            session.add(VersionChange(device_id=device.id, key=key, old=old, new=new, changed_at=report.created_at))
    state.versions = new_versions
    state.inventory = report.payload
    state.inventory_at = report.created_at


def _apply_health(device: Device, state: DeviceState, report: ReportIn) -> None:
    if state.health_at is not None and report.created_at < state.health_at:
        return
    try:
        parsed = HealthPayload.model_validate(report.payload)
    except ValidationError as exc:
        log.warning("device %s: health %s unreadable: %s", device.id, report.id, exc)
        status = "UNKNOWN"
    else:
        status = worst_health_status(parsed)
    state.health = report.payload
    state.health_at = report.created_at
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


def store_reports(session: Session, device: Device, reports: Sequence[ReportIn], now: datetime) -> list[uuid.UUID]:
    """Store the reports not seen before and update the device; return every id to ack.

    Reports already stored (by any earlier batch) are acked without being stored again.
    New ones update ``device_state`` and ``version_history`` in the order they were created.
    The caller commits; on an IntegrityError (a concurrent batch stored one first) it rolls
    back and calls again.
    """
    unique = {r.id: r for r in reports}
    existing: set[uuid.UUID] = set()
    if unique:
        existing = set(
            session.scalars(select(Report.uuid).where(Report.device_id == device.id, Report.uuid.in_(list(unique))))
        )
    new = sorted((r for r in unique.values() if r.id not in existing), key=lambda r: r.created_at)
    if new:
        session.execute(
            insert(Report),
            [
                {
                    "uuid": r.id,
                    "device_id": device.id,
                    "kind": r.kind,
                    "created_at": r.created_at,
                    "received_at": now,
                    "payload": r.payload,
                }
                for r in new
            ],
        )
        state = session.get(DeviceState, device.id)
        if state is None:
            state = DeviceState(device_id=device.id)
            session.add(state)
        for report in new:
            if report.kind == "inventory":
                _apply_inventory(session, device, state, report)
            elif report.kind == "health":
                _apply_health(device, state, report)
            elif report.kind == "heartbeat":
                _apply_heartbeat(device, report)
    if device.last_seen_at is None or device.last_seen_at < now:
        device.last_seen_at = now
    return list(unique)
