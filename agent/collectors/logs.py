"""Recent log lines: systemd journal entries (through ``journalctl -o json``) and the tails of
configured log files, reading back through their rotated generations; lines matching the error
patterns are counted per source."""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import re
import shutil
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.collectors import Collector, Field, register
from agent.config import JournalConfig, LogFileConfig
from agent.runner import mask_command, run_command

logger = logging.getLogger(__name__)

PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
JOURNAL_DIRS = ("run/log/journal", "var/log/journal")
JOURNAL_TIMEOUT_S = 30.0
JOURNAL_OUTPUT_CAP_BYTES = 4 * 1024 * 1024
MESSAGE_MAX_CHARS = 8192
MAX_JOURNALCTL_WARNINGS = 5
TAIL_BLOCK_BYTES = 64 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ROTATED_SUFFIX_RE = re.compile(r"\.\d+(\.gz)?$")


@dataclass
class LogTail:
    """The last lines of a log file and its rotated generations, oldest first."""

    lines: list[str] = field(default_factory=list)
    truncated: bool = False
    files_read: list[str] = field(default_factory=list)
    error: str | None = None


@register
class LogsCollector(Collector):
    name = "logs"
    description = "Recent journal entries and log file tails, with a count of error lines"
    fields = (
        Field("journal.available", "systemd journal readable"),
        Field("journal.note", "Why the journal is not available"),
        Field("journal.since", "Journal entries from (UTC)"),
        Field("journal.priority", "Least severe priority included"),
        Field("journal.entries[].time", "Time (UTC)"),
        Field("journal.entries[].priority", "Priority (0 emerg .. 7 debug)"),
        Field("journal.entries[].priority_name", "Priority name"),
        Field("journal.entries[].unit", "systemd unit"),
        Field("journal.entries[].identifier", "Identifier"),
        Field("journal.entries[].pid", "PID"),
        Field("journal.entries[].message", "Message"),
        Field("journal.entries[].error", "Matches an error pattern"),
        Field("journal.count", "Journal entries returned"),
        Field("journal.malformed", "journalctl output lines that were not JSON"),
        Field("journal.truncated", "journalctl output or a message cut to the size cap"),
        Field("journal.warnings", "What journalctl said besides entries"),
        Field("journal.error", "Why journalctl failed"),
        Field("journal.error_count", "Journal entries matching an error pattern"),
        Field("files[].path", "Log file (or pattern matching none)"),
        Field("files[].lines", "Last lines, oldest first"),
        Field("files[].truncated", "Older lines left out"),
        Field("files[].files_read", "Files read, newest first"),
        Field("files[].error_count", "Error lines"),
        Field("files[].error_lines", "Indexes into lines of the lines matching an error pattern"),
        Field("files[].error", "Why it could not be read"),
        Field("summary.errors", "Error lines in all sources"),
        Field("summary.by_source", "Error lines per source (journal or file)"),
    )

    root: Path = Path("/")
    journalctl: str = "journalctl"

    def collect(self) -> dict[str, Any]:
        """Return ``{journal, files, summary: {errors, by_source}}``; ``journal`` is None when
        disabled in the config."""
        settings = self.config.collect.logs
        patterns = [re.compile(p) for p in settings.error_patterns]
        journal = self.journal(settings.journal, patterns) if settings.journal.enabled else None
        files = [entry for spec in settings.files for entry in log_file_entries(spec, patterns)]
        by_source: dict[str, int] = {}
        if journal is not None and journal["available"]:
            by_source["journal"] = journal["error_count"]
        for entry in files:
            by_source[entry["path"]] = by_source.get(entry["path"], 0) + entry["error_count"]
        return {
            "journal": journal,
            "files": files,
            "summary": {"errors": sum(by_source.values()), "by_source": by_source},
        }

    def journal(self, settings: JournalConfig, patterns: list[re.Pattern]) -> dict[str, Any]:
        """Return ``{available: False, note}`` when there is no journal to read, else
        ``{available, note, since, priority, entries, count, malformed, truncated, warnings,
        error, error_count}``."""
        executable = shutil.which(self.journalctl)
        if executable is None:
            return {"available": False, "note": "journalctl not installed"}
        note = None
        if settings.files:
            present = [f for f in settings.files if f.is_file()]
            missing = [str(f) for f in settings.files if f not in present]
            if not present:
                return {
                    "available": False,
                    "note": f"journal files not found: {', '.join(missing)}",
                }
            if missing:
                note = f"journal files not found: {', '.join(missing)}"
            source = [arg for f in present for arg in ("--file", str(f))]
        elif settings.directory is not None:
            if not settings.directory.is_dir():
                note = f"journal directory {settings.directory} does not exist"
                return {"available": False, "note": note}
            source = ["-D", str(settings.directory)]
        else:
            reason = self.no_system_journal()
            if reason is not None:
                return {"available": False, "note": reason}
            source = []
        since_us = int((time.time() - settings.since) * 1_000_000)
        # No --since: before systemd 255 "--since X -n N" gives the *oldest* N entries after X
        # (systemd issues #1477, #26657). The newest N are asked for and the window applied here.
        argv = [executable, "-o", "json", "--no-pager", "--utc", "-n", str(settings.max_lines)]
        argv += ["-p", settings.priority]
        argv += [arg for unit in settings.units for arg in ("-u", unit)] + source
        result = run_command(argv, timeout_s=JOURNAL_TIMEOUT_S, output_cap_bytes=JOURNAL_OUTPUT_CAP_BYTES)
        entries, malformed, warnings, cut = parse_journal_json(result.output, since_us)
        for entry in entries:
            entry["error"] = matches_any(patterns, entry["message"])
        error = None
        if not result.ok:
            error = result.error or f"exit status {result.status}"
            if warnings and not result.timed_out:
                error += f": {warnings[0]}"
            logger.warning("%s: %s", mask_command(argv), error)
        return {
            "available": True,
            "note": note,
            "since": _iso(_EPOCH + timedelta(microseconds=since_us)),
            "priority": settings.priority,
            "entries": entries,
            "count": len(entries),
            "malformed": malformed,
            "truncated": result.truncated or cut,
            "warnings": warnings,
            "error": error,
            "error_count": sum(1 for e in entries if e["error"]),
        }

    def no_system_journal(self) -> str | None:
        """Return why this machine has no systemd journal to read, or None when it has one."""
        try:
            init = (self.root / "proc/1/comm").read_text(encoding="utf-8", errors="replace").strip()
        except OSError as exc:
            logger.debug("cannot read /proc/1/comm: %s", exc)
            init = None
        if init is not None and init != "systemd":
            return f"no systemd journal: PID 1 is {init!r}, not systemd"
        if not any((self.root / d).is_dir() for d in JOURNAL_DIRS):
            return "no systemd journal: neither /run/log/journal nor /var/log/journal exists"
        return None


def parse_journal_json(output: str, since_us: int = 0) -> tuple[list[dict[str, Any]], int, list[str], bool]:
    """Return (entries logged at or after ``since_us`` µs since the epoch, malformed line count,
    journalctl's other lines, whether a message was cut) from ``journalctl -o json`` output."""
    entries = []
    malformed = 0
    warnings: list[str] = []
    cut = False
    for line in output.splitlines():
        if not line.strip():
            continue
        if not line.startswith("{"):
            if len(warnings) < MAX_JOURNALCTL_WARNINGS:
                warnings.append(line.strip())
            continue
        try:
            fields = json.loads(line)
        except ValueError:
            malformed += 1
            continue
        realtime_us = _int_or_none(fields.get("__REALTIME_TIMESTAMP"))
        if realtime_us is not None and realtime_us < since_us:
            continue
        entry = journal_entry(fields)
        if len(entry["message"]) > MESSAGE_MAX_CHARS:
            entry["message"] = entry["message"][:MESSAGE_MAX_CHARS] + "…"
            cut = True
        entries.append(entry)
    return entries, malformed, warnings, cut


def journal_entry(fields: dict[str, Any]) -> dict[str, Any]:
    """Return ``{time, priority, priority_name, unit, identifier, pid, message}`` for one entry
    of ``journalctl -o json``."""
    priority = _int_or_none(fields.get("PRIORITY"))
    if priority is not None and not 0 <= priority < len(PRIORITY_NAMES):
        priority = None
    realtime_us = _int_or_none(fields.get("__REALTIME_TIMESTAMP"))
    return {
        "time": _iso(_EPOCH + timedelta(microseconds=realtime_us)) if realtime_us is not None else None,
        "priority": priority,
        "priority_name": PRIORITY_NAMES[priority] if priority is not None else None,
        "unit": field_text(fields["_SYSTEMD_UNIT"]) if "_SYSTEMD_UNIT" in fields else None,
        "identifier": field_text(fields.get("SYSLOG_IDENTIFIER") or fields.get("_COMM")) or None,
        "pid": _int_or_none(fields.get("_PID") or fields.get("SYSLOG_PID")),
        "message": field_text(fields.get("MESSAGE")),
    }


def field_text(value: Any) -> str:
    """Return a journal JSON field as text: journalctl writes binary values as a list of byte
    values (decoded here as UTF-8, bad bytes replaced) and repeated fields as a list of values."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(b, int) and 0 <= b <= 255 for b in value):
            return bytes(value).decode("utf-8", errors="replace")
        return "\n".join(field_text(v) for v in value)
    return str(value)


def log_file_entries(spec: LogFileConfig, patterns: list[re.Pattern]) -> list[dict[str, Any]]:
    """Return ``{path, lines, truncated, files_read, error_count, error}`` for each file that
    ``spec.path`` matches (sorted), or one entry with error "no file matches"."""
    is_pattern = any(c in spec.path for c in "*?[")
    matched = sorted(glob.glob(spec.path))
    if is_pattern:
        matched = [m for m in matched if os.path.isfile(m)]
    # A pattern such as /var/log/syslog* also matches the rotations, which the tail reads anyway.
    present = set(matched)
    matched = [m for m in matched if _ROTATED_SUFFIX_RE.sub("", m) not in present - {m}]
    if not matched:
        return [_file_entry(spec.path, LogTail(error="no file matches"), patterns)]
    entries = []
    for path in matched:
        tail = tail_log(Path(path), spec.max_lines, spec.max_bytes, spec.rotations)
        entries.append(_file_entry(path, tail, patterns))
    return entries


def _file_entry(path: str, tail: LogTail, patterns: list[re.Pattern]) -> dict[str, Any]:
    error_lines = [index for index, line in enumerate(tail.lines) if matches_any(patterns, line)]
    return {
        "path": path,
        "lines": tail.lines,
        "truncated": tail.truncated,
        "files_read": tail.files_read,
        "error_count": len(error_lines),
        "error_lines": error_lines,
        "error": tail.error,
    }


def matches_any(patterns: list[re.Pattern], text: str) -> bool:
    """Return whether any of ``patterns`` occurs in ``text``."""
    return any(p.search(text) for p in patterns)


def rotated_generations(path: Path, rotations: int) -> list[Path]:
    """Return the existing rotations of ``path`` newest first (``name.1``, ``name.2.gz``, ...),
    at most ``rotations``, stopping at the first missing generation."""
    generations = []
    for number in range(1, rotations + 1):
        for candidate in (
            path.with_name(f"{path.name}.{number}"),
            path.with_name(f"{path.name}.{number}.gz"),
        ):
            if candidate.is_file():
                generations.append(candidate)
                break
        else:
            break
    return generations


def tail_log(path: Path, max_lines: int, max_bytes: int, rotations: int = 0) -> LogTail:
    """Return the last ``max_lines`` lines of ``path`` within ``max_bytes``, continuing into its
    rotated generations while the newer files hold fewer lines than asked. Plain files are read
    from the end; gzipped ones are streamed. A file that cannot be read sets ``error``."""
    tail = LogTail()
    collected: list[bytes] = []
    lines_left, bytes_left = max_lines, max_bytes
    for index, generation in enumerate([path, *rotated_generations(path, rotations)]):
        if lines_left <= 0 or bytes_left <= 0:
            tail.truncated = _has_content(generation)
            break
        reader = _tail_gzip if generation.name.endswith(".gz") else _tail_plain
        try:
            lines, cut = reader(generation, lines_left, bytes_left)
        except (OSError, EOFError, zlib.error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            tail.error = f"cannot read: {reason}" if index == 0 else f"cannot read {generation}: {reason}"
            break
        tail.files_read.append(str(generation))
        collected[:0] = lines
        lines_left -= len(lines)
        bytes_left -= sum(len(line) + 1 for line in lines)
        if cut:
            tail.truncated = True
            break
    tail.lines = [line.decode("utf-8", errors="replace").rstrip("\r") for line in collected]
    return tail


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _tail_plain(path: Path, max_lines: int, max_bytes: int) -> tuple[list[bytes], bool]:
    """Return the last lines of a plain file, reading blocks backwards from its end, and whether
    older content was left out."""
    with path.open("rb") as file:
        position = file.seek(0, os.SEEK_END)
        blocks: deque[bytes] = deque()
        window_bytes = 0
        newlines = 0
        # One byte more than the budget, to see whether the window starts at a line boundary.
        while position > 0 and window_bytes <= max_bytes and newlines <= max_lines:
            step = min(TAIL_BLOCK_BYTES, position, max_bytes + 1 - window_bytes)
            position -= step
            file.seek(position)
            block = file.read(step)
            blocks.appendleft(block)
            window_bytes += len(block)
            newlines += block.count(b"\n")
    window = b"".join(blocks)
    if not window:
        return [], False
    lines = (window[:-1] if window.endswith(b"\n") else window).split(b"\n")
    cut = False
    if position > 0:
        cut = True
        if len(lines) > 1:
            lines.pop(0)  # the start of a line that began before the window
        else:
            lines = [lines[0][-max(max_bytes - 1, 1) :]]  # one line longer than the byte cap
    if len(lines) > max_lines:
        del lines[: len(lines) - max_lines]
        cut = True
    while len(lines) > 1 and sum(len(line) + 1 for line in lines) > max_bytes:
        lines.pop(0)
        cut = True
    return lines, cut


def _tail_gzip(path: Path, max_lines: int, max_bytes: int) -> tuple[list[bytes], bool]:
    """Return the last lines of a gzipped file (streamed; it cannot be read from the end) and
    whether older content was left out. A line longer than ``max_bytes`` keeps its end."""
    kept: deque[bytes] = deque()
    kept_bytes = 0
    cut = False

    def keep(line: bytes) -> None:
        nonlocal kept_bytes, cut
        kept.append(line)
        kept_bytes += len(line) + 1
        while len(kept) > max_lines or (kept_bytes > max_bytes and len(kept) > 1):
            kept_bytes -= len(kept.popleft()) + 1
            cut = True

    line = b""
    with gzip.open(path, "rb") as file:
        while chunk := file.readline(TAIL_BLOCK_BYTES):
            line += chunk
            if len(line) > max_bytes:
                line = line[-max_bytes:]
                cut = True
            if chunk.endswith(b"\n"):
                keep(line[:-1])
                line = b""
    if line:  # the last line had no newline
        keep(line)
    return list(kept), cut


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
