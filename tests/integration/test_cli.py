"""The installed ``telemaint`` command, run as a user runs it, against real local servers."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.realparts import require

TELEMAINT = str(Path(sys.executable).with_name("telemaint"))
EXAMPLE = Path(__file__).parents[2] / "configs" / "agent.example.yaml"
PLUGINS = Path("/usr/lib/nagios/plugins")


def telemaint(*args: str, state_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, TELEMAINT_STATE_DIR=str(state_dir))
    env.pop("TELEMAINT_CONFIG", None)
    return subprocess.run([TELEMAINT, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def test_version(tmp_path):
    from agent import __version__

    result = telemaint("--version", state_dir=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"telemaint {__version__}"


def test_inventory_json_on_the_example_config(tmp_path):
    result = telemaint("inventory", "--json", "--config", str(EXAMPLE), state_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    assert inventory["device"]["serial"] == "TB3-2024-0117"
    assert set(inventory["collectors"]) == {"system", "versions", "network", "logs"}
    for name, collector in inventory["collectors"].items():
        assert collector["status"] in ("ok", "skipped"), (name, collector["message"])
    system = inventory["collectors"]["system"]["data"]
    assert system["hostname"] == socket.gethostname()
    versions = inventory["collectors"]["versions"]["data"]
    python = next(c for c in versions["components"] if c["name"] == "python")
    assert python["version"] == ".".join(map(str, sys.version_info[:3])) or python["version"].count(".") == 2
    # The package list is remembered in the state dir for the next run's changes.
    assert (tmp_path / "packages.json").exists()


def test_inventory_only_and_human_output(tmp_path):
    result = telemaint("inventory", "--only", "system,network", "--config", str(EXAMPLE), state_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "== system (ok" in result.stdout
    assert "== network (ok" in result.stdout
    assert "== versions" not in result.stdout
    bad = telemaint("inventory", "--only", "system,bogus", "--config", str(EXAMPLE), state_dir=tmp_path)
    assert bad.returncode == 2
    assert "unknown collector bogus" in bad.stderr


@pytest.fixture
def http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"state": "ready"}' if self.path == "/status" else b"not here"
            self.send_response(200 if self.path == "/status" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path: Path, checks: str) -> Path:
    path.write_text("device:\n  name: it-bench\nhealth:\n  checks:\n" + checks)
    return path


def test_check_against_real_tcp_and_http_servers(tmp_path, http_server):
    config = write_config(
        tmp_path / "agent.yaml",
        f"""\
    - {{name: web-port, type: tcp, host: 127.0.0.1, port: {http_server}, timeout: 3s}}
    - {{name: web-ui, type: http, url: "http://127.0.0.1:{http_server}/status", body_pattern: '"state": "ready"'}}
""",
    )
    result = telemaint("check", "--json", "--config", str(config), state_dir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    health = json.loads(result.stdout)
    assert health["status"] == "OK"
    assert [c["status"] for c in health["checks"]] == ["OK", "OK"]

    down = closed_port()
    config = write_config(
        tmp_path / "agent.yaml",
        f"""\
    - {{name: web-port, type: tcp, host: 127.0.0.1, port: {http_server}}}
    - {{name: plc, type: tcp, host: 127.0.0.1, port: {down}, timeout: 2s}}
    - {{name: missing-page, type: http, url: "http://127.0.0.1:{http_server}/nope"}}
""",
    )
    result = telemaint("check", "--config", str(config), state_dir=tmp_path)
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["STATUS", "CHECK", "TYPE"]
    assert any(line.startswith("CRITICAL") and " plc " in line for line in lines)
    assert any(line.startswith("CRITICAL") and "missing-page" in line and "404" in line for line in lines)
    assert lines[-1] == "Overall: CRITICAL"


def test_check_runs_real_nagios_plugins(tmp_path):
    check_disk = require(str(PLUGINS / "check_disk"), "monitoring-plugins-basic")
    check_procs = require(str(PLUGINS / "check_procs"), "monitoring-plugins-basic")
    config = write_config(
        tmp_path / "agent.yaml",
        f"""\
    - {{name: disk-ok, type: command, command: [{check_disk}, -w, "0%", -c, "0%", -p, /]}}
    - {{name: disk-critical, type: command, command: [{check_disk}, -w, "100%", -c, "100%", -p, /]}}
    - {{name: procs, type: command, command: [{check_procs}, -w, "1:", -c, "1:"]}}
""",
    )
    result = telemaint("check", "--json", "--config", str(config), state_dir=tmp_path)
    health = json.loads(result.stdout)
    by_name = {c["name"]: c for c in health["checks"]}
    assert by_name["disk-ok"]["status"] == "OK", by_name["disk-ok"]
    assert by_name["disk-critical"]["status"] == "CRITICAL", by_name["disk-critical"]
    assert by_name["procs"]["status"] == "OK", by_name["procs"]
    assert any(p["label"] == "/" and p["unit"] in ("B", "MB", "MiB") for p in by_name["disk-ok"]["perfdata"])
    assert by_name["procs"]["perfdata"][0]["label"] == "procs"
    assert health["status"] == "CRITICAL"
    assert result.returncode == 2


def test_broken_config_names_every_problem_with_its_line(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text(
        """\
device:
  name: bench
  serail: X1
server:
  url: ftp://telemaint.example.com
health:
  checks:
    - name: disk
      type: disk_usage
      critical: lots
    - name: web
      type: http
collect:
  logs:
    error_patterns: ['(unclosed']
"""
    )
    result = telemaint("config", "validate", "--config", str(config), state_dir=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{config}:3: device.serail: unknown key",
        f"{config}:5: server.url: 'ftp://telemaint.example.com' is not an http(s) URL",
        f"{config}:10: health.checks[0].critical: Input should be a valid number, unable to parse string as a number",
        f"{config}:11: health.checks[1].url: required key is missing",
        f"{config}:15: collect.logs.error_patterns[0]: invalid regular expression: "
        "missing ), unterminated subpattern at position 0",
    ]
    # `check` with a broken config is UNKNOWN (3) to monitoring tools, not CRITICAL.
    check = telemaint("check", "--config", str(config), state_dir=tmp_path)
    assert check.returncode == 3
    assert f"{config}:3: device.serail: unknown key" in check.stderr


def test_yaml_syntax_error_exit_2(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("device:\n  name: 'unterminated\nhealth: {}\n")
    result = telemaint("config", "validate", "--config", str(config), state_dir=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{config}:")
    assert "YAML syntax error" in result.stderr


def test_config_from_environment_variable(tmp_path):
    config = write_config(tmp_path / "agent.yaml", "    - {name: mem, type: memory, warning: 100, critical: 100}\n")
    env = dict(os.environ, TELEMAINT_CONFIG=str(config), TELEMAINT_STATE_DIR=str(tmp_path))
    result = subprocess.run([TELEMAINT, "config", "validate"], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith(f"{config}: OK")
