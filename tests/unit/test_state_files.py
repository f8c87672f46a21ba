"""Broken files in the agent's state directory: the outbox is moved aside and started afresh, the
identity files give one line naming the file and what to do, the package snapshot is replaced."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import sqlite3
from pathlib import Path

import pytest

from agent import outbox as outbox_module
from agent.daemon import AgentDaemon, DaemonSettings, status_document
from agent.identity import (
    CredentialsError,
    IdentityError,
    check_device_key,
    ensure_device_key,
    load_credentials,
)
from agent.outbox import (
    STATE_PROBLEMS_FILE,
    Outbox,
    acknowledge_state_problems,
    new_report,
    read_state_problems,
)

BROKEN_NAME_RE = re.compile(r"^outbox\.sqlite\.broken-\d{8}T\d{6}Z(-\d+)?$")
GOOD_CREDENTIALS = {
    "device_id": "17",
    "token": "tmd_secret",
    "server_url": "https://t.example.com",
    "enrolled_at": "2026-01-01T00:00:00Z",
    "ca_file": None,
}


def truncate_100(path: Path) -> None:
    os.truncate(path, 100)


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def zero_length(path: Path) -> None:
    os.truncate(path, 0)


BREAKAGES = [truncate_100, random_bytes, zero_length]


def filled_outbox(path: Path, count: int = 5) -> list[str]:
    """Create an outbox at ``path`` holding ``count`` heartbeats; return their ids."""
    with Outbox(path) as outbox:
        reports = [new_report("heartbeat", {"n": n, "pad": "x" * 2000}) for n in range(count)]
        for report in reports:
            outbox.put(report)
    return [r.id for r in reports]


def broken_copies(state: Path) -> list[Path]:
    return sorted(p for p in state.iterdir() if BROKEN_NAME_RE.match(p.name))


def reset_events(outbox: Outbox) -> list[dict]:
    return [
        event
        for report in outbox.peek(limit=1000)
        if report.kind == "events"
        for event in report.payload["events"]
        if event["type"] == "outbox_reset"
    ]


# --- the outbox ---------------------------------------------------------------------------------


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_outbox_is_moved_aside_and_a_fresh_one_started(tmp_path, caplog, breakage):
    path = tmp_path / "outbox.sqlite"
    filled_outbox(path)
    breakage(path)
    broken_size = path.stat().st_size

    with caplog.at_level(logging.ERROR, logger="agent.outbox"), Outbox(path) as outbox:
        [copy] = broken_copies(tmp_path)
        assert copy.stat().st_size == broken_size
        assert outbox.last_reset is not None and outbox.last_reset.moved_to == copy
        [event] = reset_events(outbox)
        assert event["broken_copy"] == str(copy)
        assert event["broken_size_bytes"] == broken_size
        assert event["lost_reports"] is None  # nothing left to count in these
        assert "unknown number of reports" in event["message"] and f"{broken_size} bytes" in event["message"]
        outbox.put(new_report("heartbeat", {"after": True}))
        assert outbox.depth() == {"events": 1, "heartbeat": 1, "total": 2}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage()
    assert str(copy) in errors[0].getMessage()

    [problem] = read_state_problems(tmp_path)
    assert problem["file"] == "outbox.sqlite" and problem["moved_to"] == str(copy)
    with Outbox(path) as again:  # the fresh outbox is fine: no second reset
        assert again.last_reset is None
    assert len(broken_copies(tmp_path)) == 1


def test_a_database_failing_its_integrity_check_is_reset_and_its_reports_counted(tmp_path):
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as outbox:
        for n in range(10):
            outbox.put(new_report("inventory", {"n": n, "pad": "x" * 20_000}))  # overflow pages
    with path.open("r+b") as file:  # the last page is an overflow page: point it nowhere
        file.seek(path.stat().st_size - 4096)
        file.write(b"\xff\xff\xff\xff")

    with Outbox(path) as outbox:
        assert outbox.last_reset is not None
        assert outbox.last_reset.reason.startswith("integrity check failed: ")
        assert "\n" not in outbox.last_reset.reason
        [event] = reset_events(outbox)
        assert event["lost_reports"] == 10
        assert "10 report(s) may have been lost" in event["message"]


def test_a_sqlite_file_that_is_not_an_outbox_is_reset(tmp_path):
    path = tmp_path / "outbox.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE reports (something TEXT)")
        db.executemany("INSERT INTO reports VALUES (?)", [("a",), ("b",)])
    db.close()
    with Outbox(path) as outbox:
        assert outbox.last_reset is not None
        assert reset_events(outbox)[0]["lost_reports"] == 2


def test_first_start_is_no_false_alarm(tmp_path, caplog):
    path = tmp_path / "state" / "outbox.sqlite"
    with caplog.at_level(logging.WARNING), Outbox(path) as outbox:
        assert outbox.last_reset is None
        assert outbox.depth() == {"total": 0}
    assert path.stat().st_size > 0  # never left empty: an empty outbox means lost state
    assert not caplog.records
    assert read_state_problems(path.parent) == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["outbox.lock", "outbox.sqlite"]


def test_corruption_found_while_running_resets_and_keeps_the_new_report(tmp_path):
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    for n in range(30):
        outbox.put(new_report("heartbeat", {"n": n, "pad": "y" * 3000}))
    outbox._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as file:  # damage every page but the header
        file.seek(4096)
        file.write(os.urandom(path.stat().st_size - 4096))
    with sqlite3.connect(path) as other:  # another writer: the open connection rereads its pages
        other.execute("PRAGMA user_version = 7")
    other.close()

    report = new_report("heartbeat", {"after": True})
    outbox.put(report)
    assert outbox.last_reset is not None and "malformed" in outbox.last_reset.reason
    assert [r.kind for r in outbox.peek()] == ["events", "heartbeat"]
    assert outbox.peek()[1].id == report.id
    assert len(broken_copies(tmp_path)) == 1
    outbox.close()


def test_a_busy_outbox_is_never_taken_for_broken(tmp_path, monkeypatch):
    path = tmp_path / "outbox.sqlite"
    ids = filled_outbox(path)
    monkeypatch.setattr(outbox_module, "BUSY_TIMEOUT_S", 0.1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("DELETE FROM meta")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            Outbox(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert broken_copies(tmp_path) == []
    with Outbox(path) as outbox:
        assert [r.id for r in outbox.peek()] == ids


def test_a_busy_outbox_while_running_is_not_reset(tmp_path, monkeypatch):
    path = tmp_path / "outbox.sqlite"
    filled_outbox(path)
    monkeypatch.setattr(outbox_module, "BUSY_TIMEOUT_S", 0.1)
    outbox = Outbox(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            outbox.put(new_report("heartbeat", {}))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert broken_copies(tmp_path) == [] and outbox.last_reset is None
    assert outbox.depth()["total"] == 5
    outbox.close()


def _open_and_put(path: str, start, results) -> None:
    start.wait(30)
    with Outbox(Path(path)) as outbox:
        outbox.put(new_report("heartbeat", {"pid": os.getpid()}))
        results.put(outbox.last_reset is not None)


def test_processes_opening_a_broken_outbox_at_once_move_it_aside_once(tmp_path):
    path = tmp_path / "outbox.sqlite"
    filled_outbox(path)
    random_bytes(path)
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    procs = [context.Process(target=_open_and_put, args=(str(path), start, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    assert sorted(results.get(timeout=10) for _ in procs) == [False, False, False, True]
    assert len(broken_copies(tmp_path)) == 1
    assert len(read_state_problems(tmp_path)) == 1
    with Outbox(path) as outbox:
        assert outbox.depth() == {"events": 1, "heartbeat": 4, "total": 5}


def test_an_outbox_reset_by_another_process_is_reopened_without_a_second_alarm(tmp_path):
    path = tmp_path / "outbox.sqlite"
    filled_outbox(path)
    running = Outbox(path)
    random_bytes(path.with_name("garbage"))
    os.replace(path.with_name("garbage"), path)  # the file is replaced under the open connection
    with Outbox(path) as other:
        assert other.last_reset is not None
    running.put(new_report("heartbeat", {"late": True}))
    assert running.last_reset is None
    assert running.depth() == {"events": 1, "heartbeat": 1, "total": 2}
    assert len(broken_copies(tmp_path)) == 1 and len(read_state_problems(tmp_path)) == 1
    running.close()


# --- the notice until acknowledged ------------------------------------------------------------


def test_status_shows_the_reset_until_acknowledged(tmp_path):
    filled_outbox(tmp_path / "outbox.sqlite")
    truncate_100(tmp_path / "outbox.sqlite")
    Outbox(tmp_path / "outbox.sqlite").close()
    for _ in range(2):  # it stays, read after read
        [problem] = status_document(tmp_path, None, {"total": 1})["state_problems"]
        assert problem["until"] == "acknowledged" and "outbox.sqlite.broken-" in problem["message"]
    assert acknowledge_state_problems(tmp_path) == 1
    assert status_document(tmp_path, None, {"total": 1})["state_problems"] == []
    assert not (tmp_path / STATE_PROBLEMS_FILE).exists()
    assert acknowledge_state_problems(tmp_path) == 0


@pytest.mark.parametrize("content", [b"", b"[{", os.urandom(64), b'{"a": 1}', b"[1, 2]"])
def test_a_broken_notice_file_is_a_problem_itself_and_ack_clears_it(tmp_path, content):
    (tmp_path / STATE_PROBLEMS_FILE).write_bytes(content)
    [problem] = read_state_problems(tmp_path)
    assert STATE_PROBLEMS_FILE in problem["message"]
    assert acknowledge_state_problems(tmp_path) == 1
    assert read_state_problems(tmp_path) == []


# --- credentials and the device key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (json.dumps(GOOD_CREDENTIALS).encode()[:40], "not valid JSON"),
        (b"", "the file is empty"),
        (os.urandom(100), "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({k: v for k, v in GOOD_CREDENTIALS.items() if k != "token"}).encode(), "missing key token"),
        (json.dumps({**GOOD_CREDENTIALS, "extra": 1}).encode(), "unknown key extra"),
        (json.dumps({**GOOD_CREDENTIALS, "token": 5}).encode(), "token is not a non-empty string"),
        (json.dumps({**GOOD_CREDENTIALS, "device_id": None}).encode(), "device_id is not a non-empty string"),
    ],
)
def test_broken_credentials_name_the_file_and_what_to_do(tmp_path, content, why):
    (tmp_path / "credentials.json").write_bytes(content)
    with pytest.raises(CredentialsError) as raised:
        load_credentials(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / "credentials.json") in message and why in message
    assert "telemaint enroll --force" in message and "\n" not in message
    assert "tmd_secret" not in message


def test_good_credentials_still_load_and_absent_ones_mean_not_enrolled(tmp_path):
    assert load_credentials(tmp_path) is None
    (tmp_path / "credentials.json").write_text(json.dumps(GOOD_CREDENTIALS))
    assert load_credentials(tmp_path).device_id == "17"
    (tmp_path / "credentials.json").write_text(json.dumps({**GOOD_CREDENTIALS, "ca_file": "/etc/ca.pem"}))
    assert load_credentials(tmp_path).ca_file == "/etc/ca.pem"


def test_unreadable_credentials_are_one_line(tmp_path):
    (tmp_path / "credentials.json").mkdir()
    with pytest.raises(CredentialsError, match=r"cannot read .*credentials\.json"):
        load_credentials(tmp_path)


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_device_key_names_the_file(tmp_path, breakage):
    ensure_device_key(tmp_path)
    assert check_device_key(tmp_path) is None
    breakage(tmp_path / "id_ed25519")
    problem = check_device_key(tmp_path)
    assert problem is not None and str(tmp_path / "id_ed25519") in problem and "enroll --force" in problem
    with pytest.raises(IdentityError, match="id_ed25519"):
        ensure_device_key(tmp_path)


def test_a_key_whose_body_is_damaged_is_refused(tmp_path):
    ensure_device_key(tmp_path)
    lines = (tmp_path / "id_ed25519").read_bytes().splitlines(keepends=True)
    lines[1] = b"A" * (len(lines[1]) - 1) + b"\n"
    (tmp_path / "id_ed25519").write_bytes(b"".join(lines))
    with pytest.raises(IdentityError, match="id_ed25519"):
        ensure_device_key(tmp_path)


# --- the daemon with broken state -------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path):
    daemon = AgentDaemon(DaemonSettings(config_path="", state_dir=str(tmp_path)))
    yield daemon
    daemon.outbox.close()


def test_the_daemon_runs_on_unenrolled_with_broken_credentials_and_says_so_once(daemon, tmp_path, caplog):
    (tmp_path / "credentials.json").write_bytes(b'{"device_id": "1", "tok')
    with caplog.at_level(logging.INFO, logger="agent.daemon"):
        for _ in range(3):
            assert daemon._get_uplink() is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "credentials.json is broken" in errors[0]

    reply = daemon.handle_request({"action": "report", "kind": "heartbeat"})
    assert reply["ok"] and not reply["sent"] and "telemaint enroll --force" in reply["error"]
    status = daemon.handle_request({"action": "status"})["status"]
    assert status["enrolled"] is False
    assert [p["file"] for p in status["state_problems"]] == ["credentials.json"]
    assert status["state_problems"][0]["until"] == "fixed"

    (tmp_path / "credentials.json").write_text(json.dumps(GOOD_CREDENTIALS))
    assert daemon._get_uplink() is not None
    assert daemon.handle_request({"action": "status"})["status"]["state_problems"] == []


def test_the_daemon_acknowledges_state_problems_for_the_cli(tmp_path):
    filled_outbox(tmp_path / "outbox.sqlite")
    zero_length(tmp_path / "outbox.sqlite")
    daemon = AgentDaemon(DaemonSettings(config_path="", state_dir=str(tmp_path)))
    try:
        assert [e["type"] for e in reset_events(daemon.outbox)] == ["outbox_reset"]
        problems = daemon.handle_request({"action": "status"})["status"]["state_problems"]
        assert [p["file"] for p in problems] == ["outbox.sqlite"]
        assert daemon.handle_request({"action": "ack_state_problems"}) == {"ok": True, "acknowledged": 1}
        assert daemon.handle_request({"action": "status"})["status"]["state_problems"] == []
    finally:
        daemon.outbox.close()


# --- the package snapshot ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        os.urandom(200),
        b'{"manager": "dpkg", "recorded_at": "2026-01-01T00:00:00Z", "digest": "ab", "packages": [["a", "1"]',
        b'{"manager": "dpkg", "recorded_at": "2026-01-01T00:00:00Z", "digest": "ab", "packages": "abc"}',
        b'{"manager": "dpkg", "recorded_at": "2026-01-01T00:00:00Z", "digest": "ab", "packages": [["ab"]]}',
        b'{"manager": "dpkg", "digest": "ab", "packages": []}',
        b'["dpkg"]',
    ],
)
def test_a_broken_package_snapshot_is_no_previous_list_one_warning_and_replaced(tmp_path, monkeypatch, caplog, content):
    from agent.collectors import CollectContext, versions
    from agent.config import AgentConfig

    installed = [versions.InstalledPackage("base-files", "12.4", "amd64")]
    monkeypatch.setattr(versions, "detect_package_manager", lambda: "dpkg")
    monkeypatch.setattr(versions, "list_installed_packages", lambda manager: installed)
    config = AgentConfig.model_validate({"collect": {"versions": {"packages": True}}})
    collector = versions.VersionsCollector(CollectContext(config, tmp_path))
    snapshot = tmp_path / versions.PACKAGES_STATE_FILE
    snapshot.write_bytes(content)

    with caplog.at_level(logging.WARNING, logger="agent.collectors.versions"):
        packages = collector.packages(notes := [])
    assert packages["changes"] is None
    [warning] = [r.getMessage() for r in caplog.records]
    assert str(snapshot) in warning and "\n" not in warning
    assert any(str(snapshot) in note for note in notes)
    stored = json.loads(snapshot.read_text())
    assert stored["packages"] == [["base-files", "12.4"]]

    caplog.clear()
    again = collector.packages(notes := [])  # the replacement is a good snapshot
    assert again["changes"] == {"since": stored["recorded_at"], "added": [], "removed": [], "upgraded": []}
    assert not caplog.records and notes == []
