"""The sections of a device page, read leniently from the stored inventory and health payloads.

An agent may skip or fail a collector, send an older or newer shape, or put anything in a
field; every function here returns the documented keys with safe types whatever it is given,
so that a page always renders and says what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from server.api.models import CommandOut, DeviceUsageOut, VersionChangeOut
from server.clock import as_utc
from server.ingest import COMPONENT_KEY_PREFIX, usage_day
from server.models import HEALTH_STATUSES
from server.web.queries import HealthSample

JOURNAL_ERROR_PRIORITY_MAX = 3  # err and worse (0 emerg .. 7 debug)
LOG_LINES_SHOWN_MAX = 50
LOG_TAIL_SHOWN_WHEN_UNSURE = 20
PACKAGE_CHANGES_SHOWN_MAX = 100
RESULT_VALUE_MAX_CHARS = 300

VERSION_LABELS = {"agent": "telemaint agent", "os": "OS", "kernel": "Kernel", "bios": "BIOS", "packages": "Packages"}
VERSION_ORDER = ("os", "kernel", "bios", "packages", "agent")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _texts(value: Any) -> list[str]:
    return (
        [str(item) for item in value if item is not None and not isinstance(item, dict | list)]
        if isinstance(value, list)
        else []
    )


def _text_fields(item: dict[str, Any], *keys: str) -> dict[str, str | None]:
    return {key: _text(item.get(key)) for key in keys}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def health_status(value: Any) -> str:
    """Return ``value`` when it is a health status (OK, WARNING, CRITICAL, UNKNOWN), else UNKNOWN."""
    return value if value in HEALTH_STATUSES else "UNKNOWN"


def collector(inventory: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """Return ``{status, message, data}`` of one collector of an inventory.

    ``status`` is the agent's (``ok``, ``skipped``, ``failed``) or ``missing`` when the
    inventory has no such collector or there is no inventory (``message`` says which);
    ``data`` is always a dict.
    """
    if not isinstance(inventory, dict):
        return {"status": "missing", "message": "No inventory yet.", "data": {}}
    part = _dict(_dict(inventory.get("collectors")).get(name))
    if not part:
        return {"status": "missing", "message": f"The {name} collector is not in the latest inventory.", "data": {}}
    return {
        "status": _text(part.get("status")) or "unknown",
        "message": _text(part.get("message")) or "",
        "data": _dict(part.get("data")),
    }


def system_sheet(inventory: dict[str, Any] | None) -> dict[str, Any]:
    """Return ``{collector, hostname, os, kernel, uptime_s, boot_time, cpu_count, load: [1, 5, 15 min],
    memory: {total_bytes, used_bytes, percent}, disks: [{device, mountpoint, fstype, total_bytes,
    used_bytes, free_bytes, percent}]}``."""
    part = collector(inventory, "system")
    data = part["data"]
    cpu = _dict(data.get("cpu"))
    memory = _dict(data.get("memory"))
    return {
        "collector": part,
        "hostname": _text(data.get("hostname")),
        "os": _text(_dict(data.get("os")).get("pretty_name")),
        "kernel": _text(_dict(data.get("kernel")).get("release")),
        "uptime_s": _number(data.get("uptime_s")),
        "boot_time": _text(data.get("boot_time")),
        "cpu_count": _number(cpu.get("count_logical")),
        "load": [_number(cpu.get(f"load_{minutes}")) for minutes in (1, 5, 15)],
        "memory": {
            "total_bytes": _number(memory.get("total_bytes")),
            "used_bytes": _number(memory.get("used_bytes")),
            "percent": _number(memory.get("percent")),
        },
        "disks": [
            {
                "device": _text(d.get("device")),
                "mountpoint": _text(d.get("mountpoint")),
                "fstype": _text(d.get("fstype")),
                "total_bytes": _number(d.get("total_bytes")),
                "used_bytes": _number(d.get("used_bytes")),
                "free_bytes": _number(d.get("free_bytes")),
                "percent": _number(d.get("percent")),
            }
            for d in _dicts(data.get("disks"))
        ],
    }


def network_sheet(inventory: dict[str, Any] | None) -> dict[str, Any]:
    """Return the network sheet: ``{collector, interfaces: [{name, mac, mtu, up, speed_mbps,
    duplex, addresses: [{family, address, netmask, prefixlen}]}], gateways: [{family, gateway,
    interface}], dns: {nameservers, search, source_files, systemd_resolved_stub, error},
    ntp: [{server, kind, daemon, source_file}], clock: {synchronized, max_error_s,
    estimated_error_s} | None, listening_tcp: [{address, port, family}]}``.

    Interfaces that are up come first, the loopback last.
    """
    part = collector(inventory, "network")
    data = part["data"]
    interfaces = [
        {
            "name": _text(i.get("name")) or "?",
            "mac": _text(i.get("mac")),
            "mtu": _number(i.get("mtu")),
            "up": _bool(i.get("up")),
            "speed_mbps": _number(i.get("speed_mbps")),
            "duplex": _text(i.get("duplex")),
            "addresses": [
                {
                    "family": _text(a.get("family")),
                    "address": _text(a.get("address")),
                    "netmask": _text(a.get("netmask")),
                    "prefixlen": _number(a.get("prefixlen")),
                }
                for a in _dicts(i.get("addresses"))
            ],
        }
        for i in _dicts(data.get("interfaces"))
    ]
    interfaces.sort(key=lambda i: (i["name"] == "lo", i["up"] is not True, i["name"]))
    dns = _dict(data.get("dns"))
    clock = _dict(data.get("clock"))
    return {
        "collector": part,
        "interfaces": interfaces,
        "gateways": [_text_fields(g, "family", "gateway", "interface") for g in _dicts(data.get("gateways"))],
        "dns": {
            "nameservers": _texts(dns.get("nameservers")),
            "search": _texts(dns.get("search")),
            "source_files": _texts(dns.get("source_files")),
            "systemd_resolved_stub": _bool(dns.get("systemd_resolved_stub")),
            "error": _text(dns.get("error")),
        },
        "ntp": [_text_fields(n, "server", "kind", "daemon", "source_file") for n in _dicts(data.get("ntp"))],
        "clock": {
            "synchronized": _bool(clock.get("synchronized")),
            "max_error_s": _number(clock.get("max_error_s")),
            "estimated_error_s": _number(clock.get("estimated_error_s")),
        }
        if clock
        else None,
        "listening_tcp": sorted(
            (
                {"address": _text(p.get("address")), "port": _number(p.get("port")), "family": _text(p.get("family"))}
                for p in _dicts(data.get("listening_tcp"))
            ),
            key=lambda p: (p["port"] or 0, p["address"] or ""),
        ),
    }


def version_label(key: str) -> str:
    """Return how a key of the version map reads: ``component:camera`` -> ``camera``."""
    if key.startswith(COMPONENT_KEY_PREFIX):
        return key[len(COMPONENT_KEY_PREFIX) :]
    return VERSION_LABELS.get(key, key)


def versions_sheet(
    inventory: dict[str, Any] | None,
    versions: dict[str, str | None],
    history: Sequence[VersionChangeOut],
) -> dict[str, Any]:
    """Return ``{collector, current: [{key, label, value, changed_at}], history: [{label, old,
    new, changed_at}], dmi: {vendor, product, product_version, serial, board, bios_vendor,
    bios_version, bios_date} | None, packages: {manager, count, digest, changes: {since, added,
    removed, upgraded, shown_max}} | None, components: [{name, version, source, error}],
    notes: [str]}``.

    ``current`` lists the server's version map (the same keys as the history) with the time
    each last changed; ``history`` is newest first.
    """
    part = collector(inventory, "versions")
    data = part["data"]
    last_change: dict[str, datetime] = {}
    for change in history:
        if change.key not in last_change or change.changed_at > last_change[change.key]:
            last_change[change.key] = change.changed_at
    order = {key: index for index, key in enumerate(VERSION_ORDER)}
    keys = sorted(versions, key=lambda k: (k.startswith(COMPONENT_KEY_PREFIX), order.get(k, len(order)), k))
    current = [
        {"key": k, "label": version_label(k), "value": versions[k], "changed_at": last_change.get(k)} for k in keys
    ]
    dmi_data = _dict(data.get("dmi"))
    dmi = None
    if dmi_data:
        board = _dict(dmi_data.get("board"))
        bios = _dict(dmi_data.get("bios"))
        board_text = " ".join(t for t in (_text(board.get("vendor")), _text(board.get("name"))) if t)
        dmi = {
            **_text_fields(dmi_data, "vendor", "product", "product_version", "serial"),
            "board": board_text or None,
            "bios_vendor": _text(bios.get("vendor")),
            "bios_version": _text(bios.get("version")),
            "bios_date": _text(bios.get("date")),
        }
    packages_data = _dict(data.get("packages"))
    packages = None
    if packages_data:
        changes_data = _dict(packages_data.get("changes"))
        changes = None
        if changes_data:
            changes = {
                "since": _text(changes_data.get("since")),
                "added": [
                    _text_fields(p, "name", "version")
                    for p in _dicts(changes_data.get("added"))[:PACKAGE_CHANGES_SHOWN_MAX]
                ],
                "removed": [
                    _text_fields(p, "name", "version")
                    for p in _dicts(changes_data.get("removed"))[:PACKAGE_CHANGES_SHOWN_MAX]
                ],
                "upgraded": [
                    _text_fields(p, "name", "from", "to")
                    for p in _dicts(changes_data.get("upgraded"))[:PACKAGE_CHANGES_SHOWN_MAX]
                ],
                "counts": {kind: len(_dicts(changes_data.get(kind))) for kind in ("added", "removed", "upgraded")},
            }
        packages = {
            "manager": _text(packages_data.get("manager")),
            "count": _number(packages_data.get("count")),
            "digest": _text(packages_data.get("digest")),
            "changes": changes,
        }
    return {
        "collector": part,
        "current": current,
        "history": [
            {"label": version_label(c.key), "old": c.old, "new": c.new, "changed_at": c.changed_at} for c in history
        ],
        "dmi": dmi,
        "packages": packages,
        "components": [
            {
                "name": _text(c.get("name")) or "?",
                "version": _text(c.get("version")),
                "source": _text(c.get("source")),
                "error": _text(c.get("error")),
            }
            for c in _dicts(data.get("components"))
        ],
        "notes": _texts(data.get("notes")),
    }


def _journal_errors(journal: dict[str, Any]) -> dict[str, Any]:
    entries = [
        {
            "time": _text(e.get("time")),
            "priority": _number(e.get("priority")),
            "priority_name": _text(e.get("priority_name")),
            "unit": _text(e.get("unit")),
            "identifier": _text(e.get("identifier")),
            "pid": _number(e.get("pid")),
            "message": _text(e.get("message")) or "",
            "error": e.get("error") is True,
        }
        for e in _dicts(journal.get("entries"))
    ]
    error_count = _number(journal.get("error_count")) or 0
    # The agent flags what matches its error patterns; priority err and worse counts too.
    matching = [
        e for e in entries if e["error"] or (e["priority"] is not None and e["priority"] <= JOURNAL_ERROR_PRIORITY_MAX)
    ]
    shown, unsure = matching, False
    if not matching and error_count:
        shown, unsure = entries[-LOG_TAIL_SHOWN_WHEN_UNSURE:], True
    return {
        "available": _bool(journal.get("available")),
        "note": _text(journal.get("note")),
        "error": _text(journal.get("error")),
        "count": len(entries),
        "error_count": error_count,
        "entries": shown[-LOG_LINES_SHOWN_MAX:],
        "hidden": max(0, len(shown) - LOG_LINES_SHOWN_MAX),
        "unsure": unsure,
    }


def _file_errors(entry: dict[str, Any]) -> dict[str, Any]:
    lines = _texts(entry.get("lines"))
    error_count = _number(entry.get("error_count")) or 0
    flagged = entry.get("error_lines")
    indexes = flagged if isinstance(flagged, list) else []
    matching = [lines[i] for i in indexes if isinstance(i, int) and 0 <= i < len(lines)]
    shown, unsure = matching, False
    if not matching and error_count:
        shown, unsure = lines[-LOG_TAIL_SHOWN_WHEN_UNSURE:], True
    return {
        "path": _text(entry.get("path")) or "?",
        "error": _text(entry.get("error")),
        "count": len(lines),
        "error_count": error_count,
        "truncated": _bool(entry.get("truncated")),
        "lines": shown[-LOG_LINES_SHOWN_MAX:],
        "hidden": max(0, len(shown) - LOG_LINES_SHOWN_MAX),
        "unsure": unsure,
    }


def log_errors(inventory: dict[str, Any] | None) -> dict[str, Any]:
    """Return the recent log errors: ``{collector, errors, journal: {available, note, error,
    count, error_count, entries: [{time, priority, priority_name, unit, identifier, pid,
    message}], hidden, unsure} | None, files: [{path, error, count, error_count, truncated,
    lines, hidden, unsure}]}``.

    Shown are journal entries of priority err or worse or flagged ``error`` by the agent, and the
    file lines the agent listed in ``error_lines``, newest last. When the agent counted errors
    but flagged none, the last lines are shown and ``unsure`` is True.
    """
    part = collector(inventory, "logs")
    data = part["data"]
    journal = _dict(data.get("journal"))
    return {
        "collector": part,
        "errors": _number(_dict(data.get("summary")).get("errors")),
        "journal": _journal_errors(journal) if journal else None,
        "files": [_file_errors(f) for f in _dicts(data.get("files"))],
    }


def _check(check: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": _text(check.get("name")) or "?",
        "type": _text(check.get("type")),
        "status": health_status(check.get("status")),
        "message": _text(check.get("message")) or "",
        "value": _number(check.get("value")),
        "unit": _text(check.get("unit")),
        "duration_ms": _number(check.get("duration_ms")),
    }


def _not_after(text: str | None, limit: datetime | None) -> str | datetime | None:
    """Return ``text`` (a time the agent wrote), or ``limit`` when it says a later time."""
    if text is None or limit is None:
        return text
    try:
        moment = as_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        return text
    return limit if moment > limit else text


def health_now(health: dict[str, Any] | None, health_at: datetime | None = None) -> dict[str, Any] | None:
    """Return the latest health report as ``{status, generated_at, checks: [{name, type, status,
    message, value, unit, duration_ms}]}``, the worst checks first; None without a report.

    ``generated_at`` is the agent's, but never later than ``health_at`` (when the server
    stored the report as received): a clock running ahead does not show as a future check.
    """
    if not isinstance(health, dict):
        return None
    checks = [_check(c) for c in _dicts(health.get("checks"))]
    checks.sort(key=lambda c: -HEALTH_STATUSES.index(c["status"]))
    return {
        "status": health_status(health.get("status")),
        "generated_at": _not_after(_text(health.get("generated_at")), health_at),
        "checks": checks,
    }


def health_history(samples: Sequence[HealthSample]) -> dict[str, Any]:
    """Return the statuses of each check over the given health reports (newest first):
    ``{times: [datetime], overall: [status | None], rows: [{name, statuses: [status | None]}],
    unloaded: int}``.

    A check absent from a report has None in that column; rows follow the newest report's order.
    A report too large to load (``payload`` None) has None everywhere and counts in ``unloaded``.
    """
    times = [s.created_at for s in samples]
    overall = [None if s.payload is None else health_status(_dict(s.payload).get("status")) for s in samples]
    per_report = [
        {(_text(c.get("name")) or "?"): health_status(c.get("status")) for c in _dicts(_dict(s.payload).get("checks"))}
        for s in samples
    ]
    names: list[str] = []
    for statuses in per_report:
        names.extend(name for name in statuses if name not in names)
    return {
        "times": times,
        "overall": overall,
        "rows": [{"name": name, "statuses": [statuses.get(name) for statuses in per_report]} for name in names],
        "unloaded": sum(1 for s in samples if s.payload is None),
    }


def storage_usage(usage: DeviceUsageOut, now: datetime) -> dict[str, Any]:
    """Return today's (UTC) storage of the device against its budget: ``{budget_bytes, bytes,
    reports, percent, refused_bytes, refused_reports, first_refused_at}`` (zeros on a day
    without reports)."""
    today = next((d for d in usage.days if d.day == usage_day(now)), None)
    used = today.bytes if today else 0
    return {
        "budget_bytes": usage.daily_budget_bytes,
        "bytes": used,
        "reports": today.reports if today else 0,
        "percent": round(100 * used / usage.daily_budget_bytes, 1),
        "refused_bytes": today.refused_bytes if today else 0,
        "refused_reports": today.refused_reports if today else 0,
        "first_refused_at": today.first_refused_at if today else None,
    }


def command_result(command: CommandOut) -> list[tuple[str, str]]:
    """Return a command's result as ``(key, text)`` pairs for display (nested values as JSON)."""
    pairs = []
    for key, value in (command.result or {}).items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        if len(text) > RESULT_VALUE_MAX_CHARS:
            text = text[:RESULT_VALUE_MAX_CHARS] + "…"
        pairs.append((str(key), text))
    return pairs
