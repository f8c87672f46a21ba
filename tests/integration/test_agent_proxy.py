"""The agent reaches the server through an HTTP proxy (`server.proxy`): Debian's tinyproxy."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import AgentProcess, ServerProcess, free_port, stop_process, wait_for
from tests.realparts import require


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """tinyproxy on a loopback port; yields its URL and its log file."""
    executable = require("tinyproxy", "tinyproxy")
    port = free_port()
    log = tmp_path / "tinyproxy.log"
    config = tmp_path / "tinyproxy.conf"
    config.write_text(
        f'Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 30\nMaxClients 20\nLogLevel Info\nLogFile "{log}"\n'
    )
    proc = subprocess.Popen([executable, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for(lambda: log.exists() and "listening on" in log.read_text().lower(), 20, "tinyproxy to listen")
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop_process(proc)


def test_enroll_and_report_through_the_proxy(tinyproxy, tmp_path):
    proxy_url, proxy_log = tinyproxy
    with ServerProcess(tmp_path / "server") as server:
        agent = AgentProcess(tmp_path / "agent", server, proxy=proxy_url)
        code = json.loads(server.cli("enrollment-code", "--json"))["code"]
        enrolled = agent.run("enroll", "--server", server.url, "--code", code)
        assert enrolled.returncode == 0, enrolled.stderr
        sent = agent.run("report", "--kind", "health")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert len(server.report_uuids()) == 1
    requests_seen = proxy_log.read_text()
    assert f"POST {server.url}/api/v1/enroll" in requests_seen
    assert f"POST {server.url}/api/v1/agent/reports" in requests_seen


def test_a_proxy_that_is_down_is_named(tmp_path):
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    with ServerProcess(tmp_path / "server") as server:
        agent = AgentProcess(tmp_path / "agent", server, proxy=dead_proxy)
        code = json.loads(server.cli("enrollment-code", "--json"))["code"]
        refused = agent.run("enroll", "--server", server.url, "--code", code)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"telemaint: enrollment failed: proxy refused the connection to {server.url}")
