"""A durable on-disk queue of reports, so that nothing is lost while the server is unreachable.

Every report is written here first (SQLite, WAL, synchronous=FULL) and deleted only when the
server has acknowledged its UUID. Reports leave in the order they were queued. The outbox is
bounded: when it is over its limits, the oldest heartbeats go first, then the oldest inventory and
health reports that a newer one of the same kind supersedes; events are never dropped.

A broken outbox file (not a database, truncated, failing its integrity check, emptied) is moved
aside as ``outbox.sqlite.broken-YYYYmmddTHHMMSSZ`` and a fresh one takes its place, at open or
when corruption shows while running. The reset is logged, queued as an ``outbox_reset`` event
and recorded as a state problem (:func:`read_state_problems`) until the operator acknowledges it.
A busy or locked database is never taken for a broken one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from agent.identity import write_private

logger = logging.getLogger(__name__)

REPORT_KINDS: tuple[str, ...] = ("heartbeat", "inventory", "health", "events")
DEFAULT_MAX_REPORTS = 20_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
BUSY_TIMEOUT_S = 10.0
BROKEN_COUNT_TIMEOUT_S = 1.0
BROKEN_STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
SIDE_FILE_SUFFIXES = ("-wal", "-shm")
STATE_LOCK_FILE = "outbox.lock"
STATE_PROBLEMS_FILE = "state-problems.json"
QUICK_CHECK_MAX_ERRORS = 3
# Primary SQLite result codes that mean the file itself is damaged, never that it is busy.
CORRUPTION_ERROR_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
PRIMARY_CODE_MASK = 0xFF

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
# Read at open: a database that opens but holds something else than an outbox fails here.
_SCHEMA_PROBES = (
    "SELECT seq, id, kind, created_at, payload, size FROM reports LIMIT 1",
    "SELECT key, value FROM meta LIMIT 1",
)

T = TypeVar("T")


@dataclass(frozen=True)
class Report:
    id: str
    kind: str
    created_at: str
    payload: dict[str, Any]

    def as_wire(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "created_at": self.created_at, "payload": self.payload}


@dataclass(frozen=True)
class OutboxReset:
    """A broken outbox file that was moved aside: why, where to, its size and how many reports
    it still answered for (None when it could not say)."""

    reason: str
    moved_to: Path
    size_bytes: int
    lost_reports: int | None

    def describe(self, path: Path) -> str:
        """Return one line for the log, the event and ``telemaint status``."""
        if self.lost_reports is None:
            lost = f"an unknown number of reports may have been lost (the broken file has {self.size_bytes} bytes)"
        else:
            lost = f"{self.lost_reports} report(s) may have been lost"
        return f"outbox {path} was broken ({self.reason}); moved it to {self.moved_to} and started a fresh one; {lost}"


class _BrokenFile(Exception):
    """The outbox file is damaged or is not an outbox; the message says how."""


def new_report(kind: str, payload: dict[str, Any]) -> Report:
    """Return a report with a fresh UUID, stamped now (UTC)."""
    if kind not in REPORT_KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    return Report(str(uuid.uuid4()), kind, _now_iso_ms(), payload)


def _now_iso_ms() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_corruption(exc: BaseException) -> bool:
    """Return True when ``exc`` says the database file is damaged or not a database (never for
    a busy or locked database, a full disk or a permission problem)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.DatabaseError)
        and code is not None
        and code & PRIMARY_CODE_MASK in CORRUPTION_ERROR_CODES
    )


def _is_schema_mismatch(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.DatabaseError) and code is not None and code & PRIMARY_CODE_MASK == sqlite3.SQLITE_ERROR
    )


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's lock (``outbox.lock``, flock): the daemon and CLI commands
    take it to open, reset or acknowledge, so only one of them moves a broken outbox aside.
    Raises OSError when the lock file cannot be opened."""
    fd = os.open(state_dir / STATE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class Outbox:
    """The queue in ``path`` (created 0600 with its directory). Safe to use from several threads
    and from several processes (the daemon and a CLI command) at once.

    Raises sqlite3.Error or OSError when the file cannot be opened for a reason other than being
    broken (busy for longer than ``BUSY_TIMEOUT_S``, permissions, a full disk).
    """

    def __init__(self, path: Path, max_reports: int = DEFAULT_MAX_REPORTS, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(path)
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self.last_reset: OutboxReset | None = None  # the last broken file this object moved aside
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db, self._file_id = self._open()

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
            self._call(lambda: self._insert(report, payload))

    def peek(self, limit: int = 100, max_bytes: int = 4 * 1024 * 1024) -> list[Report]:
        """Return the oldest reports, in order: at most ``limit`` and about ``max_bytes`` of payload
        (always at least one)."""
        query = "SELECT id, kind, created_at, payload, size FROM reports ORDER BY seq LIMIT ?"
        with self._lock:
            rows = self._call(lambda: self._db.execute(query, (limit,)).fetchall())
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
            return self._call(lambda: self._delete(ids))

    def depth(self) -> dict[str, int]:
        """Return the number of queued reports by kind, and ``total``."""
        query = "SELECT kind, COUNT(*) FROM reports GROUP BY kind"
        with self._lock:
            rows = self._call(lambda: self._db.execute(query).fetchall())
        counts = {kind: count for kind, count in rows}
        counts["total"] = sum(counts.values())
        return counts

    def set_meta(self, key: str, value: str) -> None:
        query = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
        with self._lock:
            self._call(lambda: self._db.execute(query, (key, value)))

    def get_meta(self, key: str) -> str | None:
        query = "SELECT value FROM meta WHERE key = ?"
        with self._lock:
            row = self._call(lambda: self._db.execute(query, (key,)).fetchone())
        return row[0] if row else None

    # --- opening and resetting (callers hold self._lock, or are __init__) --------------------

    def _call(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` on the current file; when the file was replaced (another process
        reset it) reopen first, and when it turns out broken reset it and run it once more."""
        if _file_identity(self.path) != self._file_id:
            self._reopen()
        try:
            return operation()
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            self._reopen(broken_reason=str(exc))
        return operation()

    def _reopen(self, broken_reason: str | None = None) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._db, self._file_id = self._open(self._file_id if broken_reason else None, broken_reason)

    def _open(
        self, broken_id: tuple[int, int] | None = None, broken_reason: str | None = None
    ) -> tuple[sqlite3.Connection, tuple[int, int]]:
        """Return a checked connection to the outbox and the identity of its file, creating it
        when missing and resetting it when broken. ``broken_id`` names a file a running
        connection found broken (``broken_reason``); it is moved aside unless another process
        already did."""
        with state_lock(self.path.parent):
            reset = None
            if broken_id is not None and _file_identity(self.path) == broken_id:
                reset = self._move_aside(broken_reason or "corrupted")
            try:
                db, file_id = self._connect_checked()
            except _BrokenFile as exc:
                reset = self._move_aside(str(exc))
                db, file_id = self._connect_checked()  # a fresh file: broken again is a real fault
            if reset is not None:
                self._announce(db, reset)
        return db, file_id

    def _connect_checked(self) -> tuple[sqlite3.Connection, tuple[int, int]]:
        """Open the file (creating it first when missing) and check it. Raises _BrokenFile."""
        self._create_if_missing()
        st = os.stat(self.path)
        if st.st_size == 0:  # this code never leaves an empty file: what it held is gone
            raise _BrokenFile("the file is empty")
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            rows = [str(row[0]) for row in db.execute(f"PRAGMA quick_check({QUICK_CHECK_MAX_ERRORS})")]
            if rows != ["ok"]:
                # Rows may hold several lines, under a "*** in database main ***" heading.
                found = [line.strip() for row in rows for line in row.splitlines() if not line.startswith("***")]
                raise _BrokenFile(f"integrity check failed: {'; '.join(found[:QUICK_CHECK_MAX_ERRORS])}")
            for probe in _SCHEMA_PROBES:
                db.execute(probe).fetchall()
        except sqlite3.DatabaseError as exc:
            db.close()
            if is_corruption(exc) or _is_schema_mismatch(exc):
                raise _BrokenFile(str(exc)) from exc
            raise
        except _BrokenFile:
            db.close()
            raise
        return db, (st.st_dev, st.st_ino)

    def _create_if_missing(self) -> None:
        """Create an empty outbox at ``path`` unless one is there: built under a temporary name
        and renamed into place, so the path never holds a half-made or empty file."""
        if os.path.lexists(self.path):
            return
        temp = self.path.with_name(f".{self.path.name}.new")
        for leftover in (temp, *(Path(f"{temp}{s}") for s in SIDE_FILE_SUFFIXES)):
            leftover.unlink(missing_ok=True)
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            with contextlib.closing(sqlite3.connect(temp, isolation_level=None)) as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            os.replace(temp, self.path)
        finally:
            temp.unlink(missing_ok=True)

    def _move_aside(self, reason: str) -> OutboxReset:
        """Rename the broken file (and its -wal/-shm) to ``NAME.broken-STAMP``; return what was
        moved and how many reports it still answers for."""
        stamp = datetime.now(UTC).strftime(BROKEN_STAMP_FORMAT)
        target = self.path.with_name(f"{self.path.name}.broken-{stamp}")
        number = 1
        while os.path.lexists(target):
            number += 1
            target = self.path.with_name(f"{self.path.name}.broken-{stamp}-{number}")
        size = os.stat(self.path).st_size
        os.rename(self.path, target)
        for suffix in SIDE_FILE_SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{self.path}{suffix}", f"{target}{suffix}")
        return OutboxReset(reason, target, size, count_reports(target) if size else None)

    def _announce(self, db: sqlite3.Connection, reset: OutboxReset) -> None:
        """Log the reset, queue it as an event in the fresh outbox ``db`` and record it as a
        state problem."""
        self.last_reset = reset
        message = reset.describe(self.path)
        logger.error("%s", message)
        event = {
            "time": _now_iso_ms(),
            "type": "outbox_reset",
            "message": message,
            "broken_copy": str(reset.moved_to),
            "broken_size_bytes": reset.size_bytes,
            "lost_reports": reset.lost_reports,
        }
        report = new_report("events", {"events": [event]})
        self._insert(report, json.dumps(report.payload, separators=(",", ":")), db)
        problem = {
            "at": event["time"],
            "file": self.path.name,
            "message": message,
            "moved_to": str(reset.moved_to),
            "lost_reports": reset.lost_reports,
        }
        try:
            _write_state_problems(self.path.parent, [*_read_recorded_problems(self.path.parent), problem])
        except OSError as exc:
            logger.error("cannot record the outbox reset in %s: %s", self.path.parent / STATE_PROBLEMS_FILE, exc)

    # --- statements (callers hold self._lock) ------------------------------------------------

    def _insert(self, report: Report, payload: str, db: sqlite3.Connection | None = None) -> None:
        db = self._db if db is None else db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR IGNORE INTO reports (id, kind, created_at, payload, size) VALUES (?, ?, ?, ?, ?)",
                (report.id, report.kind, report.created_at, payload, len(payload)),
            )
            self._enforce_bounds(db)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _delete(self, ids: list[str]) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            deleted = self._db.executemany("DELETE FROM reports WHERE id = ?", [(i,) for i in ids]).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            _rollback(self._db)
            raise
        return deleted

    def _enforce_bounds(self, db: sqlite3.Connection) -> None:
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM reports").fetchone()
        if count <= self.max_reports and size <= self.max_bytes:
            return
        dropped = 0
        # Oldest heartbeats first, then superseded inventory/health reports; never events.
        for query in (
            "SELECT seq, size FROM reports WHERE kind = 'heartbeat' ORDER BY seq",
            "SELECT seq, size FROM reports r WHERE kind IN ('inventory', 'health') AND EXISTS "
            "(SELECT 1 FROM reports n WHERE n.kind = r.kind AND n.seq > r.seq) ORDER BY seq",
        ):
            for seq, row_size in db.execute(query).fetchall():
                if count <= self.max_reports and size <= self.max_bytes:
                    break
                db.execute("DELETE FROM reports WHERE seq = ?", (seq,))
                count -= 1
                size -= row_size
                dropped += 1
        if dropped:
            logger.warning("outbox full: dropped %d old report(s) to stay within its limits", dropped)
        if count > self.max_reports or size > self.max_bytes:
            logger.warning("outbox over its limits with events only (%d reports, %d bytes); keeping them", count, size)


def _rollback(db: sqlite3.Connection) -> None:
    # SQLite may have rolled back already (a corrupt page, a full disk): nothing left to undo.
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def count_reports(path: Path) -> int | None:
    """Return how many reports the (broken) outbox file at ``path`` still lists, read-only, or
    None when it cannot say."""
    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=BROKEN_COUNT_TIMEOUT_S)) as db:
            return int(db.execute("SELECT COUNT(*) FROM reports").fetchone()[0])
    except (sqlite3.Error, OSError):
        return None


# --- state problems: what went wrong with the state files, shown until acknowledged ----------


def _read_recorded_problems(state_dir: Path) -> list[dict[str, Any]]:
    """Return the problems recorded in ``state-problems.json`` (a broken one reads as one
    problem saying so). Raises OSError when the file exists but cannot be read."""
    path = state_dir / STATE_PROBLEMS_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except ValueError:
        data = None
    if not isinstance(data, list) or not all(isinstance(p, dict) and isinstance(p.get("message"), str) for p in data):
        return [{"file": STATE_PROBLEMS_FILE, "message": f"{path} is unreadable; it records past state problems"}]
    return data


def _write_state_problems(state_dir: Path, problems: list[dict[str, Any]]) -> None:
    path = state_dir / STATE_PROBLEMS_FILE
    if problems:
        write_private(path, json.dumps(problems, indent=2).encode())
    else:
        path.unlink(missing_ok=True)


def read_state_problems(state_dir: Path) -> list[dict[str, Any]]:
    """Return the recorded state problems (an outbox reset, ...), oldest first, each
    ``{at, file, message, ...}``; they stay until :func:`acknowledge_state_problems`."""
    try:
        return _read_recorded_problems(state_dir)
    except OSError as exc:
        path = state_dir / STATE_PROBLEMS_FILE
        return [{"file": STATE_PROBLEMS_FILE, "message": f"cannot read {path}: {exc.strerror or exc}"}]


def acknowledge_state_problems(state_dir: Path) -> int:
    """Forget the recorded state problems; return how many there were. Raises OSError when
    the state directory cannot be written."""
    if not (state_dir / STATE_PROBLEMS_FILE).exists():
        return 0
    with state_lock(state_dir):
        try:
            count = len(_read_recorded_problems(state_dir))
        except OSError:
            count = 1
        _write_state_problems(state_dir, [])
    return count
