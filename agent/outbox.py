"""A durable on-disk queue of reports, so that nothing is lost while the server is unreachable.

Every report is written here first (SQLite, WAL, synchronous=FULL) and deleted only when the
server has acknowledged its UUID. Reports leave in the order they were queued. The outbox is
bounded: when it is over its limits, the oldest heartbeats go first, then the oldest inventory and
health reports that a newer one of the same kind supersedes; events are never dropped.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPORT_KINDS: tuple[str, ...] = ("heartbeat", "inventory", "health", "events")
DEFAULT_MAX_REPORTS = 20_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    payload TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_kind ON reports (kind, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Report:
    id: str
    kind: str
    created_at: str
    payload: dict[str, Any]

    def as_wire(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "created_at": self.created_at, "payload": self.payload}


def new_report(kind: str, payload: dict[str, Any]) -> Report:
    """Return a report with a fresh UUID, stamped now (UTC)."""
    if kind not in REPORT_KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return Report(str(uuid.uuid4()), kind, created, payload)


class Outbox:
    """The queue in ``path`` (created 0600 with its directory). Safe to use from several threads
    and from several processes (the daemon and a CLI command) at once."""

    def __init__(self, path: Path, max_reports: int = DEFAULT_MAX_REPORTS, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(path)
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.touch(mode=0o600, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, report: Report) -> None:
        """Store ``report`` durably (committed before this returns), then enforce the bounds."""
        payload = json.dumps(report.payload, separators=(",", ":"))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO reports (id, kind, created_at, payload, size) VALUES (?, ?, ?, ?, ?)",
                    (report.id, report.kind, report.created_at, payload, len(payload)),
                )
                self._enforce_bounds()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def peek(self, limit: int = 100, max_bytes: int = 4 * 1024 * 1024) -> list[Report]:
        """Return the oldest reports, in order: at most ``limit`` and about ``max_bytes`` of payload
        (always at least one)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, created_at, payload, size FROM reports ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        batch: list[Report] = []
        total = 0
        for report_id, kind, created_at, payload, size in rows:
            if batch and total + size > max_bytes:
                break
            total += size
            batch.append(Report(report_id, kind, created_at, json.loads(payload)))
        return batch

    def ack(self, ids: Iterable[str]) -> int:
        """Delete the acknowledged reports; return how many were deleted."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = self._db.executemany("DELETE FROM reports WHERE id = ?", [(i,) for i in ids]).rowcount
            self._db.execute("COMMIT")
        return deleted

    def depth(self) -> dict[str, int]:
        """Return the number of queued reports by kind, and ``total``."""
        with self._lock:
            rows = self._db.execute("SELECT kind, COUNT(*) FROM reports GROUP BY kind").fetchall()
        counts = {kind: count for kind, count in rows}
        counts["total"] = sum(counts.values())
        return counts

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _enforce_bounds(self) -> None:
        count, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM reports").fetchone()
        if count <= self.max_reports and size <= self.max_bytes:
            return
        dropped = 0
        # Oldest heartbeats first, then superseded inventory/health reports; never events.
        for query in (
            "SELECT seq, size FROM reports WHERE kind = 'heartbeat' ORDER BY seq",
            "SELECT seq, size FROM reports r WHERE kind IN ('inventory', 'health') AND EXISTS "
            "(SELECT 1 FROM reports n WHERE n.kind = r.kind AND n.seq > r.seq) ORDER BY seq",
        ):
            for seq, row_size in self._db.execute(query).fetchall():
                if count <= self.max_reports and size <= self.max_bytes:
                    break
                self._db.execute("DELETE FROM reports WHERE seq = ?", (seq,))
                count -= 1
                size -= row_size
                dropped += 1
        if dropped:
            logger.warning("outbox full: dropped %d old report(s) to stay within its limits", dropped)
        if count > self.max_reports or size > self.max_bytes:
            logger.warning("outbox over its limits with events only (%d reports, %d bytes); keeping them", count, size)
