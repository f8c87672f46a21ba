import gzip
import json
import pathlib
import re
import sys

import pytest

from agent.collectors import CollectContext
from agent.collectors.logs import (
    LogsCollector,
    field_text,
    journal_entry,
    parse_journal_json,
    tail_log,
)
from agent.config import DEFAULT_ERROR_PATTERNS, AgentConfig

ERROR_PATTERNS = [re.compile(p) for p in DEFAULT_ERROR_PATTERNS]


def make_collector(tmp_path, files=(), journal=None, error_patterns=None) -> LogsCollector:
    logs: dict = {"files": list(files), "journal": {"enabled": False} if journal is None else journal}
    if error_patterns is not None:
        logs["error_patterns"] = error_patterns
    config = AgentConfig.model_validate({"collect": {"logs": logs}})
    collector = LogsCollector(CollectContext(config, tmp_path / "state"))
    collector.root = tmp_path / "root"
    return collector


def lines_text(prefix, count, start=1):
    return "".join(f"{prefix} line {n}\n" for n in range(start, start + count))


# --- tails and rotations -----------------------------------------------------------------------


@pytest.fixture
def rotated_log(tmp_path):
    """app.log (2 lines) <- app.log.1 (plain, 3) <- app.log.2.gz (3) <- app.log.3.gz (3)."""
    log = tmp_path / "app.log"
    log.write_text(lines_text("current", 2))
    (tmp_path / "app.log.1").write_text(lines_text("gen1", 3))
    for number in (2, 3):
        with gzip.open(tmp_path / f"app.log.{number}.gz", "wt") as file:
            file.write(lines_text(f"gen{number}", 3))
    return log


def test_tail_reads_back_through_plain_and_gzipped_rotations(rotated_log):
    tail = tail_log(rotated_log, max_lines=7, max_bytes=64 * 1024, rotations=2)
    assert tail.lines == [
        "gen2 line 2", "gen2 line 3",
        "gen1 line 1", "gen1 line 2", "gen1 line 3",
        "current line 1", "current line 2",
    ]  # fmt: skip
    assert tail.files_read == [str(rotated_log), f"{rotated_log}.1", f"{rotated_log}.2.gz"]
    assert tail.truncated is True
    assert tail.error is None


def test_tail_stops_at_the_configured_number_of_rotations(rotated_log):
    tail = tail_log(rotated_log, max_lines=100, max_bytes=64 * 1024, rotations=2)
    assert len(tail.lines) == 8
    assert tail.lines[0] == "gen2 line 1"
    assert f"{rotated_log}.3.gz" not in tail.files_read
    assert tail.truncated is False


def test_tail_does_not_open_rotations_when_the_current_file_suffices(rotated_log):
    tail = tail_log(rotated_log, max_lines=2, max_bytes=64 * 1024, rotations=3)
    assert tail.lines == ["current line 1", "current line 2"]
    assert tail.files_read == [str(rotated_log)]
    assert tail.truncated is True  # older lines exist in app.log.1


def test_tail_without_rotations_ignores_them(rotated_log):
    tail = tail_log(rotated_log, max_lines=10, max_bytes=64 * 1024, rotations=0)
    assert tail.lines == ["current line 1", "current line 2"]
    assert tail.truncated is False


def test_tail_caps_lines(tmp_path):
    log = tmp_path / "big.log"
    log.write_text(lines_text("entry", 5000))
    tail = tail_log(log, max_lines=10, max_bytes=1024 * 1024)
    assert tail.lines == [f"entry line {n}" for n in range(4991, 5001)]
    assert tail.truncated is True


class CountingReads:
    """Wraps a file object and counts the bytes read through it."""

    total = 0

    def __init__(self, file):
        self._file = file

    def read(self, size=-1):
        data = self._file.read(size)
        CountingReads.total += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def test_tail_of_a_2_gib_log_reads_only_the_tail_within_the_byte_cap(tmp_path, monkeypatch):
    log = tmp_path / "huge.log"
    with log.open("wb") as file:
        file.truncate(2 * 1024**3)  # sparse: 2 GiB that a whole-file read would have to go through
        file.seek(0, 2)
        file.write(b"\n" + lines_text("tail", 400).encode())
    real_open = pathlib.Path.open
    monkeypatch.setattr(pathlib.Path, "open", lambda self, *a, **k: CountingReads(real_open(self, *a, **k)))
    CountingReads.total = 0

    tail = tail_log(log, max_lines=1000, max_bytes=2000)

    assert sum(len(line) + 1 for line in tail.lines) <= CountingReads.total <= 2001
    assert sum(len(line) + 1 for line in tail.lines) <= 2000
    assert tail.lines[-1] == "tail line 400"
    assert tail.lines[0].startswith("tail line ")  # whole lines only, no cut-off first line
    assert len(tail.lines) == 2000 // len("tail line 400\n")
    assert tail.truncated is True


def test_gzipped_rotation_is_capped_in_lines_and_bytes(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("")  # just rotated: everything is in app.log.1.gz
    with gzip.open(tmp_path / "app.log.1.gz", "wt") as file:
        file.write(lines_text("old", 1000) + "y" * 500 + "\nlast\n")
    assert tail_log(log, max_lines=3, max_bytes=10_000, rotations=1).lines == ["old line 1000", "y" * 500, "last"]
    small = tail_log(log, max_lines=3, max_bytes=100, rotations=1)
    assert small.lines == ["last"]
    assert small.truncated is True
    with gzip.open(tmp_path / "app.log.1.gz", "wt") as file:
        file.write("a\n" + "z" * 500 + "END\n")
    long_last = tail_log(log, max_lines=3, max_bytes=100, rotations=1)
    assert long_last.lines == ["z" * 96 + "END"]
    assert long_last.files_read == [str(log), f"{log}.1.gz"]


def test_byte_cap_spans_rotations(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("a" * 9 + "\n")
    (tmp_path / "app.log.1").write_text("b" * 9 + "\n" + "c" * 9 + "\n")
    tail = tail_log(log, max_lines=100, max_bytes=25, rotations=1)
    assert tail.lines == ["c" * 9, "a" * 9]
    assert tail.truncated is True


def test_a_line_longer_than_the_byte_cap_keeps_its_end(tmp_path):
    log = tmp_path / "one.log"
    log.write_text("x" * 5000 + "END\n")
    tail = tail_log(log, max_lines=10, max_bytes=100)
    assert len(tail.lines) == 1
    assert tail.lines[0].endswith("xEND")
    assert len(tail.lines[0]) < 100
    assert tail.truncated is True


def test_last_line_without_newline_and_invalid_utf8(tmp_path):
    log = tmp_path / "w.log"
    log.write_bytes(b"first\r\nbad \xff byte\npartial")
    tail = tail_log(log, max_lines=10, max_bytes=1000)
    assert tail.lines == ["first", "bad \ufffd byte", "partial"]
    assert tail.truncated is False


def test_empty_log(tmp_path):
    (tmp_path / "e.log").write_text("")
    tail = tail_log(tmp_path / "e.log", max_lines=10, max_bytes=1000, rotations=1)
    assert (tail.lines, tail.truncated, tail.error) == ([], False, None)


def test_corrupt_rotation_keeps_newer_lines(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("new\n")
    (tmp_path / "app.log.1.gz").write_bytes(b"not gzip at all")
    tail = tail_log(log, max_lines=10, max_bytes=1000, rotations=1)
    assert tail.lines == ["new"]
    assert tail.error.startswith(f"cannot read {tmp_path}/app.log.1.gz: ")


# --- the collector's file part ----------------------------------------------------------------


def test_unreadable_file_is_reported_and_the_others_are_still_read(tmp_path, monkeypatch):
    # Tests run as root, where chmod 000 does not stop a read: one "unreadable" log is a
    # directory (EISDIR), the other refuses with PermissionError through a patched Path.open.
    (tmp_path / "dir.log").mkdir()
    (tmp_path / "secret.log").write_text("hidden\n")
    (tmp_path / "ok.log").write_text("fine\nerror: disk full\n")
    real_open = pathlib.Path.open

    def refuse_secret(self, *args, **kwargs):
        if self.name == "secret.log":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refuse_secret)
    files = [{"path": str(tmp_path / n)} for n in ("dir.log", "secret.log", "ok.log")]

    data = make_collector(tmp_path, files=files).collect()

    by_path = {f["path"]: f for f in data["files"]}
    assert by_path[str(tmp_path / "dir.log")]["error"] == "cannot read: Is a directory"
    assert by_path[str(tmp_path / "secret.log")]["error"] == "cannot read: Permission denied"
    assert by_path[str(tmp_path / "secret.log")]["lines"] == []
    assert by_path[str(tmp_path / "ok.log")] == {
        "path": str(tmp_path / "ok.log"),
        "lines": ["fine", "error: disk full"],
        "truncated": False,
        "files_read": [str(tmp_path / "ok.log")],
        "error_count": 1,
        "error_lines": [1],
        "error": None,
    }


def test_glob_matches_sorted_files_and_skips_their_rotations(tmp_path):
    (tmp_path / "b.log").write_text("b\n")
    (tmp_path / "a.log").write_text("a\n")
    (tmp_path / "a.log.1").write_text("older a\n")
    (tmp_path / "sub.log").mkdir()
    data = make_collector(tmp_path, files=[{"path": f"{tmp_path}/*.log*"}]).collect()
    assert [f["path"] for f in data["files"]] == [str(tmp_path / "a.log"), str(tmp_path / "b.log")]
    assert data["files"][0]["lines"] == ["older a", "a"]


def test_glob_without_match(tmp_path):
    data = make_collector(tmp_path, files=[{"path": f"{tmp_path}/none-*.log"}]).collect()
    assert data["files"] == [
        {
            "path": f"{tmp_path}/none-*.log",
            "lines": [],
            "truncated": False,
            "files_read": [],
            "error_count": 0,
            "error_lines": [],
            "error": "no file matches",
        }
    ]


def test_error_count_summary_per_source(tmp_path):
    (tmp_path / "plc.log").write_text("start\nERROR: bus fault\nconnection failed\nok\n")
    (tmp_path / "cam.log").write_text("frame ok\nframe ok\n")
    (tmp_path / "custom.log").write_text("E42 overtemp\nfine\n")
    files = [{"path": str(tmp_path / n)} for n in ("plc.log", "cam.log")]
    data = make_collector(tmp_path, files=files).collect()
    assert [f["error_count"] for f in data["files"]] == [2, 0]
    assert [f["error_lines"] for f in data["files"]] == [[1, 2], []]
    assert data["summary"] == {
        "errors": 2,
        "by_source": {str(tmp_path / "plc.log"): 2, str(tmp_path / "cam.log"): 0},
    }
    custom = make_collector(
        tmp_path, files=[{"path": str(tmp_path / "custom.log")}], error_patterns=[r"^E\d+"]
    ).collect()
    assert custom["summary"]["errors"] == 1
    assert data["journal"] is None  # disabled in the config


# --- the journal part: when there is none to read, and parsing ---------------------------------


def journal_of(tmp_path, journal=None, journalctl=sys.executable, pid1=None, dirs=()):
    collector = make_collector(tmp_path, journal=journal or {})
    collector.journalctl = journalctl  # an existing executable: the checks before running it
    if pid1 is not None:
        (collector.root / "proc/1").mkdir(parents=True)
        (collector.root / "proc/1/comm").write_text(pid1 + "\n")
    for directory in dirs:
        (collector.root / directory).mkdir(parents=True)
    return collector.collect()["journal"]


def test_journal_without_journalctl(tmp_path):
    journal = journal_of(tmp_path, journalctl="no-such-journalctl-here")
    assert journal == {"available": False, "note": "journalctl not installed"}


def test_journal_when_pid1_is_not_systemd(tmp_path):
    journal = journal_of(tmp_path, pid1="bash", dirs=["var/log/journal"])
    assert journal == {"available": False, "note": "no systemd journal: PID 1 is 'bash', not systemd"}


def test_journal_when_systemd_keeps_no_journal(tmp_path):
    journal = journal_of(tmp_path, pid1="systemd")
    assert journal == {
        "available": False,
        "note": "no systemd journal: neither /run/log/journal nor /var/log/journal exists",
    }


def test_journal_files_that_do_not_exist(tmp_path):
    journal = journal_of(tmp_path, journal={"files": [str(tmp_path / "gone.journal")]})
    assert journal["available"] is False
    assert journal["note"] == f"journal files not found: {tmp_path / 'gone.journal'}"


def test_journal_json_parsing():
    lines = [
        json.dumps({
            "__REALTIME_TIMESTAMP": "1700000000123456", "PRIORITY": "3", "_SYSTEMD_UNIT": "plc.service",
            "SYSLOG_IDENTIFIER": "plcd", "_PID": "812", "MESSAGE": "bus fault",
        }),
        '{"MESSAGE": "cut off in the midd',
        '{"PRIORITY": "3",}',
        json.dumps({"__REALTIME_TIMESTAMP": "1700000001000000", "PRIORITY": "4",
                    "MESSAGE": [104, 105, 0, 255], "_COMM": "fwtool"}),
        "",
        "Journal file /x.journal is truncated, ignoring file.",
        json.dumps({"PRIORITY": "9", "MESSAGE": "m" * 9000}),
    ]  # fmt: skip
    entries, malformed, warnings, cut = parse_journal_json("\n".join(lines))
    assert entries[0] == {
        "time": "2023-11-14T22:13:20.123Z",
        "priority": 3,
        "priority_name": "err",
        "unit": "plc.service",
        "identifier": "plcd",
        "pid": 812,
        "message": "bus fault",
    }
    assert entries[1]["message"] == "hi\x00\ufffd"
    assert (entries[1]["unit"], entries[1]["identifier"], entries[1]["pid"]) == (None, "fwtool", None)
    assert (entries[2]["priority"], entries[2]["priority_name"], entries[2]["time"]) == (None, None, None)
    assert entries[2]["message"] == "m" * 8192 + "…"
    assert cut is True
    assert malformed == 2
    assert warnings == ["Journal file /x.journal is truncated, ignoring file."]


def test_journal_entries_before_the_window_are_left_out():
    lines = [json.dumps({"__REALTIME_TIMESTAMP": str(t), "MESSAGE": f"at {t}"}) for t in (100, 200, 300)]
    entries, *_ = parse_journal_json("\n".join(lines), since_us=200)
    assert [e["message"] for e in entries] == ["at 200", "at 300"]


def test_repeated_journal_field_becomes_lines():
    assert field_text(["first", [98, 121, 116, 101, 115]]) == "first\nbytes"
    assert journal_entry({"MESSAGE": None})["message"] == ""
