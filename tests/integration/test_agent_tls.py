"""The agent verifies the server's certificate and refuses plain http:// beyond loopback."""

from __future__ import annotations

import json

import pytest

from tests.processes import AgentProcess, ServerProcess
from tests.tls import write_self_signed_cert


@pytest.fixture
def tls_server(tmp_path):
    with ServerProcess(tmp_path / "server", tls=write_self_signed_cert(tmp_path / "tls")) as server:
        yield server


def test_enroll_over_https_needs_the_servers_ca(tls_server, tmp_path):
    agent = AgentProcess(tmp_path / "agent", tls_server)
    code = json.loads(tls_server.cli("enrollment-code", "--json"))["code"]

    untrusted = agent.run("enroll", "--server", tls_server.url, "--code", code)
    assert untrusted.returncode == 1
    assert untrusted.stderr.startswith(f"telemaint: enrollment failed: TLS verification of {tls_server.url} failed")
    assert "certificate verify failed" in untrusted.stderr
    assert not (agent.root / "state" / "credentials.json").exists()

    trusted = agent.run("enroll", "--server", tls_server.url, "--code", code, "--ca-file", str(tls_server.tls[0]))
    assert trusted.returncode == 0, trusted.stderr
    # The CA given at enrollment is used for every later request.
    sent = agent.run("report", "--kind", "health")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout.strip() == "health report sent"
    assert len(tls_server.report_uuids()) == 1


def test_plain_http_is_refused_beyond_loopback(tmp_path):
    agent = AgentProcess(tmp_path / "agent", ServerProcess(tmp_path / "server"))
    refused = agent.run("enroll", "--server", "http://telemaint.example.com", "--code", "ABCD-EFGH-JKLM")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "telemaint: enrollment failed: refusing plain http:// to telemaint.example.com: "
        "use https:// (http is allowed only to loopback)"
    )


@pytest.fixture
def plain_server(tmp_path):
    with ServerProcess(tmp_path / "server") as server:
        yield server


def test_report_is_queued_while_the_server_is_down_and_sent_later(plain_server, tmp_path):
    server = plain_server
    agent = AgentProcess(tmp_path / "agent", server)
    code = json.loads(server.cli("enrollment-code", "--json"))["code"]
    assert agent.run("enroll", "--server", server.url, "--code", code).returncode == 0
    server.stop()
    queued = agent.run("report")
    assert queued.returncode == 75
    assert queued.stdout.startswith("heartbeat report queued (1 in the outbox): cannot reach ")
    # Without a daemon, `status` says so (exit 1) and reads enrollment and the outbox from disk.
    offline = agent.run("status", "--json")
    assert offline.returncode == 1
    status = json.loads(offline.stdout)
    assert (status["daemon"], status["enrolled"], status["outbox"]) == (
        {"running": False},
        True,
        {"heartbeat": 1, "total": 1},
    )
    server.start()
    sent = agent.run("report", "--kind", "inventory")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout.strip() == "inventory report sent"
    assert len(server.report_uuids()) == 2  # the queued heartbeat went first
