"""Device status from last-seen time against the device's report interval."""

from __future__ import annotations

from datetime import datetime

ONLINE_WITHIN_INTERVALS = 2
LATE_WITHIN_INTERVALS = 10


def device_status(last_seen_at: datetime | None, report_interval_s: int, now: datetime) -> str:
    """Return ``online`` (seen within 2 intervals), ``late`` (within 10) or ``offline``."""
    if last_seen_at is None:
        return "offline"
    age_s = (now - last_seen_at).total_seconds()
    if age_s <= ONLINE_WITHIN_INTERVALS * report_interval_s:
        return "online"
    if age_s <= LATE_WITHIN_INTERVALS * report_interval_s:
        return "late"
    return "offline"
