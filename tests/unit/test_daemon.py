import socket
import threading
from pathlib import Path

import pytest

from agent.config import load_config
from agent.daemon import AgentDaemon, DaemonSettings, ask_daemon


class RecordingUplink:
    """Stands in for the server: records command results and acks every report."""

    def __init__(self):
        self.results = []
        self.reports = []

    def send_reports(self, reports):
        self.reports += reports
        return [r["id"] for r in reports]

    def send_command_result(self, command_id, status, message, result=None):
        self.results.append((command_id, status, message, result))


@pytest.fixture
def daemon(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"state_dir: {tmp_path}\nhealth:\n  checks:\n    - {{name: mem, type: memory, warning: 100, critical: 100}}\n"
    )
    daemon = AgentDaemon(DaemonSettings.from_config(load_config(path)))
    yield daemon
    daemon.outbox.close()


def test_server_commands_outside_the_allowlist_are_refused(daemon):
    uplink = RecordingUplink()
    daemon._run_server_command(uplink, {"id": 7, "kind": "shell", "args": {"cmd": "rm -rf /"}})
    assert uplink.results == [(7, "failed", "command 'shell' is not allowed on this device", None)]
    assert uplink.reports == []


def test_run_checks_delivers_the_health_report_before_the_result(daemon):
    uplink = RecordingUplink()
    daemon._run_server_command(uplink, {"id": 8, "kind": "run_checks"})
    assert [r["kind"] for r in uplink.reports] == ["health"]
    (command_id, status, message, result) = uplink.results[0]
    assert (command_id, status, message) == (8, "done", "OK: 1 checks")
    assert result["status"] == "OK"
    assert daemon.outbox.depth()["total"] == 0


def test_a_failing_job_is_recorded_and_the_daemon_goes_on(daemon):
    def broken():
        raise RuntimeError("sensor bus gone")

    job = daemon._guarded("health", broken)
    job()
    assert daemon.state.jobs["health"]["last_error"] == "RuntimeError: sensor bus gone"
    daemon._guarded("health", lambda: None)()
    assert daemon.state.jobs["health"]["last_error"] is None


def test_health_transitions_become_events(daemon, monkeypatch):
    statuses = iter(["OK", "CRITICAL"])
    monkeypatch.setattr(
        daemon,
        "collect_in_child",
        lambda args, timeout_s: {"status": next(statuses), "generated_at": "2026-11-25T00:00:00Z", "checks": []},
    )
    daemon.job_health()
    daemon.job_health()
    kinds = [r.kind for r in daemon.outbox.peek()]
    assert kinds == ["health", "health", "events"]
    assert daemon.outbox.peek()[-1].payload["events"][0]["message"] == "health OK -> CRITICAL"


def test_control_socket_answers_status_and_report(daemon):
    thread = threading.Thread(target=daemon._control_loop, daemon=True)
    thread.start()
    try:
        reply = None
        for _ in range(50):
            reply = ask_daemon(daemon.state_dir, {"action": "status"}, timeout_s=5)
            if reply is not None:
                break
            threading.Event().wait(0.05)
        assert reply["ok"] and reply["status"]["daemon"]["running"]
        # root and the telemaint group only
        assert (daemon.state_dir / "control.sock").stat().st_mode & 0o777 == 0o660
        assert reply["status"]["enrolled"] is False
        queued = ask_daemon(daemon.state_dir, {"action": "report", "kind": "heartbeat"})
        assert queued == {"ok": True, "sent": False, "queued": 1, "error": "not enrolled"}
        bad = ask_daemon(daemon.state_dir, {"action": "format-disk"})
        assert bad == {"ok": False, "error": "unknown action 'format-disk'"}
    finally:
        daemon.stop()
        thread.join(5)
    assert not thread.is_alive()


def test_collection_runs_in_a_child_process(daemon):
    health = daemon.collect_in_child(["check"], timeout_s=60)
    assert [c["name"] for c in health["checks"]] == ["mem"]
    inventory = daemon.collect_in_child(["inventory", "--only", "system"], timeout_s=60)
    assert inventory["collectors"]["system"]["status"] == "ok"
    assert inventory["collectors"]["system"]["data"]["hostname"] == socket.gethostname()


def test_a_child_without_its_document_is_an_error(daemon):
    Path(daemon.settings.config_path).write_text("health: [not, a, mapping]\n")
    with pytest.raises(RuntimeError, match="telemaint check exited 3 without its JSON document"):
        daemon.collect_in_child(["check"], timeout_s=60)


def test_the_service_process_does_not_load_the_config_models(tmp_path):
    """`telemaint run` validates agent.yaml, then execs a service that never imports pydantic."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from agent.daemon import AgentDaemon, DaemonSettings\n"
        f"AgentDaemon(DaemonSettings(config_path='', state_dir={str(tmp_path)!r})).outbox.close()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('pydantic', 'agent.config', 'agent.collectors'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_job_that_ends_after_the_stop_does_not_fail_on_the_closed_outbox(daemon, caplog):
    runner = threading.Thread(target=daemon.run)
    runner.start()
    daemon.stop()
    runner.join(timeout=30)
    assert not runner.is_alive()
    caplog.set_level("INFO", logger="agent.daemon")
    # What a check child finishing now does: queue its report. It is dropped with one line.
    daemon.queue("health", {"status": "OK", "checks": []})
    assert "finished after the stop is not queued" in caplog.text
