"""A real agent's state directory with its files broken (truncated to 100 bytes, random bytes,
zero length): the real ``telemaint`` CLI and daemon against a real server never show a
traceback, move a broken outbox aside, start a fresh one, tell the server how much may have been
lost, and show the notice in ``telemaint status`` until it is acknowledged."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import AGENT_COMMAND, CLI_TIMEOUT_S, AgentProcess, ServerProcess, clean_environ, wait_for
from tests.unit.test_state_files import BREAKAGES, broken_copies, random_bytes, truncate_100

EXIT_OK, EXIT_FAILED, EXIT_QUEUED = 0, 1, 75
Breakage = Callable[[Path], None]


@pytest.fixture
def stack(tmp_path) -> Iterator[tuple[ServerProcess, AgentProcess]]:
    server = ServerProcess(tmp_path / "server")
    agent = AgentProcess(tmp_path / "agent", server)
    try:
        yield server, agent
    finally:
        if agent.proc is not None:
            agent.proc.kill()
            agent.proc.wait()
        server.stop()


def enroll(server: ServerProcess, agent: AgentProcess, *extra: str) -> None:
    code = json.loads(server.cli("enrollment-code", "--customer", "ACME", "--json"))["code"]
    done = agent.run("enroll", "--server", server.url, "--code", code, *extra)
    assert done.returncode == EXIT_OK, done.stderr


def run_clean(agent: AgentProcess | Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``telemaint ARGS`` with the agent's config (or the config file given) and assert
    that it showed no traceback."""
    if isinstance(agent, Path):
        argv = [AGENT_COMMAND, *args, "--config", str(agent)]
        done = subprocess.run(argv, capture_output=True, text=True, env=clean_environ(), timeout=CLI_TIMEOUT_S)
    else:
        done = agent.run(*args)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def status_json(agent: AgentProcess) -> tuple[int, dict[str, Any]]:
    done = run_clean(agent, "status", "--json")
    return done.returncode, json.loads(done.stdout)


def reset_events_on_server(server: ServerProcess) -> list[dict[str, Any]]:
    with sqlite3.connect(server.db) as db:
        payloads = [json.loads(row[0]) for row in db.execute("SELECT payload FROM reports WHERE kind = 'events'")]
    return [e for p in payloads for e in p["events"] if e["type"] == "outbox_reset"]


def enrolled_then_broken(stack: tuple[ServerProcess, AgentProcess], name: str, breakage: Breakage) -> Path:
    """Start the server, enroll the agent, break the file ``name`` of its state; return the file."""
    server, agent = stack
    server.start()
    enroll(server, agent)
    path = agent.root / "state" / name
    breakage(path)
    return path


def stop_and_count_errors(agent: AgentProcess, needle: str) -> int:
    """Stop the daemon (exit 0 asserted), assert its log shows no traceback; return how many of
    its ERROR lines hold ``needle``. The log is read up to its "stopping" line: a check still
    running at SIGTERM is not waited for, and its failure to queue is logged after it."""
    assert agent.stop() == 0
    log = agent.log.read_text(errors="replace").partition("telemaint: INFO: stopping\n")[0]
    assert "Traceback" not in log
    return len([line for line in log.splitlines() if ": ERROR: " in line and needle in line])


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_cli_resets_a_broken_outbox_and_the_loss_reaches_the_server(stack, breakage: Breakage):
    server, agent = stack
    state = agent.root / "state"
    server.start()
    enroll(server, agent)
    server.stop()
    for _ in range(3):  # reports waiting for the server when the file breaks
        assert run_clean(agent, "report").returncode == EXIT_QUEUED
    breakage(state / "outbox.sqlite")
    broken_size = (state / "outbox.sqlite").stat().st_size

    code, status = status_json(agent)
    assert code == EXIT_FAILED  # the daemon does not run
    [copy] = broken_copies(state)
    assert copy.stat().st_size == broken_size
    [problem] = status["state_problems"]
    assert problem["file"] == "outbox.sqlite" and problem["until"] == "acknowledged"
    assert problem["moved_to"] == str(copy) and str(copy) in problem["message"]
    assert status["outbox"] == {"events": 1, "total": 1}  # the fresh outbox holds the loss event

    server.start()
    sent = run_clean(agent, "report")
    assert sent.returncode == EXIT_OK, sent.stdout + sent.stderr
    [event] = reset_events_on_server(server)
    assert event["broken_copy"] == str(copy) and event["broken_size_bytes"] == broken_size
    assert "may have been lost" in event["message"]

    human = run_clean(agent, "status")
    assert "state problem" in human.stdout and "telemaint status --ack" in human.stdout
    acked = run_clean(agent, "status", "--ack")
    assert acked.stdout.startswith("acknowledged 1 state problem\n")
    assert "state problem " not in acked.stdout.split("\n", 1)[1]
    assert status_json(agent)[1]["state_problems"] == []
    assert len(broken_copies(state)) == 1


def test_the_daemon_resets_a_broken_outbox_at_start_and_while_running(stack):
    server, agent = stack
    state = agent.root / "state"
    server.start()
    enroll(server, agent)
    assert run_clean(agent, "report").returncode == EXIT_OK
    truncate_100(state / "outbox.sqlite")

    agent.start()
    wait_for(lambda: len(reset_events_on_server(server)) == 1, 60, "the loss event of the reset at start")
    status = agent.status()
    assert status["daemon"]["running"]
    assert [p["file"] for p in status["state_problems"]] == ["outbox.sqlite"]

    # The file is replaced by garbage under the running daemon.
    garbage = state / "garbage"
    random_bytes(garbage)
    os.replace(garbage, state / "outbox.sqlite")
    wait_for(lambda: len(reset_events_on_server(server)) == 2, 60, "the loss event of the reset while running")
    assert len(broken_copies(state)) == 2
    wait_for(agent.drained, 60, "the fresh outbox to drain")
    assert len(agent.status()["state_problems"]) == 2

    acked = run_clean(agent, "status", "--ack", "--json")  # through the daemon
    assert acked.returncode == EXIT_OK and json.loads(acked.stdout)["state_problems"] == []
    before = len(server.report_uuids())
    wait_for(lambda: len(server.report_uuids()) > before + 2, 60, "reports after the resets")
    assert stop_and_count_errors(agent, "outbox.sqlite was broken") == 2


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_broken_credentials_are_one_line_and_the_daemon_runs_on_unenrolled(stack, breakage):
    server, agent = stack
    credentials = enrolled_then_broken(stack, "credentials.json", breakage)

    code, status = status_json(agent)
    assert code == EXIT_FAILED and status["enrolled"] is False
    [problem] = status["state_problems"]
    assert problem["file"] == "credentials.json" and "telemaint enroll --force" in problem["message"]

    report = run_clean(agent, "report")
    assert report.returncode == EXIT_QUEUED
    assert "credentials.json is broken" in report.stdout and "telemaint enroll --force" in report.stdout

    again = run_clean(agent, "enroll", "--server", server.url, "--code", "AAAA-BBBB-CCCC")
    assert again.returncode == EXIT_FAILED
    assert again.stderr.count("\n") == 1 and str(credentials) in again.stderr

    agent.start()
    wait_for(lambda: agent.status()["daemon"]["running"], 30, "the daemon to answer")
    heartbeats = agent.status()["outbox"].get("heartbeat", 0)
    wait_for(lambda: agent.status()["outbox"].get("heartbeat", 0) > heartbeats + 2, 30, "heartbeats to queue")
    assert agent.status()["state_problems"][0]["file"] == "credentials.json"

    enroll(server, agent, "--force")  # what the message says to do
    wait_for(agent.drained, 60, "the daemon to deliver under the new credentials")
    assert agent.status()["state_problems"] == []
    assert stop_and_count_errors(agent, "credentials.json is broken") == 1


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_device_key_is_one_line(stack, breakage):
    server, agent = stack
    key = enrolled_then_broken(stack, "id_ed25519", breakage)

    code, status = status_json(agent)
    assert code == EXIT_FAILED
    assert [p["file"] for p in status["state_problems"]] == ["id_ed25519"]
    again = run_clean(agent, "enroll", "--server", server.url, "--code", "AAAA-BBBB-CCCC", "--force")
    assert again.returncode == EXIT_FAILED
    assert again.stderr.count("\n") == 1 and str(key) in again.stderr

    agent.start()
    wait_for(agent.drained, 60, "the daemon to deliver (the key is not needed for reports)")
    assert stop_and_count_errors(agent, "id_ed25519") == 1


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_package_snapshot_is_replaced_with_one_warning(tmp_path, breakage):
    config = tmp_path / "agent.yaml"
    state = tmp_path / "state"
    config.write_text(f"state_dir: {state}\ncollect:\n  versions: {{packages: true}}\n")
    first = run_clean(config, "inventory", "--only", "versions", "--json")
    assert first.returncode == EXIT_OK, first.stderr
    if json.loads(first.stdout)["collectors"]["versions"]["data"]["packages"] is None:
        pytest.skip("no package manager on this machine")
    snapshot = state / "packages.json"
    good = json.loads(snapshot.read_text())
    breakage(snapshot)

    done = run_clean(config, "inventory", "--only", "versions", "--json")
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stderr.count("WARNING") == 1 and str(snapshot) in done.stderr
    assert json.loads(done.stdout)["collectors"]["versions"]["data"]["packages"]["changes"] is None
    assert json.loads(snapshot.read_text())["digest"] == good["digest"]
    assert run_clean(config, "inventory", "--only", "versions", "--json").stderr == ""
