"""The installed ``telemaint-server`` and ``telemaint`` as real processes on loopback, for integration tests.

One place starts a server, waits until it answers and stops it again; the end-to-end, TLS, demo,
dashboard and server-process tests all use it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests

BIN_DIR = Path(sys.executable).parent
SERVER_COMMAND = str(BIN_DIR / "telemaint-server")
AGENT_COMMAND = str(BIN_DIR / "telemaint")
CLI_TIMEOUT_S = 120
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20
PROBE_TIMEOUT_S = 2
QUEUED_RE = re.compile(r"queued (\w+) report ([0-9a-f-]{36})")

T = TypeVar("T")


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], T],
    timeout_s: float,
    what: str,
    interval_s: float = 0.2,
    details: Callable[[], str] | None = None,
) -> T:
    """Return the first truthy ``predicate()``; raise AssertionError, with ``details()``, after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    message = f"timed out after {timeout_s:g}s waiting for {what}"
    raise AssertionError(f"{message}\n{details()}" if details else message)


def clean_environ(**extra: str) -> dict[str, str]:
    """Return this process's environment without ``TELEMAINT_*`` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMAINT_")}
    env.update(extra)
    return env


def run_checked(argv: list[str], env: Mapping[str, str], stdin: str | None = None) -> str:
    """Run ``argv`` and return its stdout; raise AssertionError (with its output) unless it exits 0."""
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, env=dict(env), timeout=CLI_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    return done.stdout


def stop_process(process: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """SIGTERM ``process`` and return its exit status; kill it and raise AssertionError if it outlives ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"{process.args} did not stop within {timeout_s:g}s of SIGTERM") from None
    return process.returncode


class ServerProcess:
    """``telemaint-server run`` on a free loopback port, its state in ``data_dir``; initialised on creation.

    The server is configured through its environment (``TELEMAINT_SERVER_DATA_DIR`` and, when
    ``db_url`` is given, ``TELEMAINT_SERVER_DB``; without it the database is ``data_dir/server.db``).
    ``tls`` is a (cert, key) pair to serve HTTPS with; ``env`` adds variables to the environment.
    As a context manager it runs from ``start()`` to ``stop()``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        db_url: str | None = None,
        tls: tuple[Path, Path] | None = None,
        env: Mapping[str, str] | None = None,
    ):
        self.data_dir = data_dir
        self.db_url = db_url
        self.db = data_dir / "server.db"
        self.tls = tls
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify: str | bool = str(tls[0]) if tls else True
        self.log_path = data_dir / "server.log"
        self.env = clean_environ(TELEMAINT_SERVER_DATA_DIR=str(data_dir), **(env or {}))
        if db_url is not None:
            self.env["TELEMAINT_SERVER_DB"] = db_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.cli("init")

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """Run ``telemaint-server ARGS`` against this server's data; return its stdout, assert it exits 0."""
        return run_checked([SERVER_COMMAND, *args], self.env, stdin=stdin)

    def start(self) -> None:
        """Start the server; return once it serves its API, raise AssertionError (with its log) if it does not."""
        tls = ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])] if self.tls else []
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [SERVER_COMMAND, "run", "--host", "127.0.0.1", "--port", str(self.port), *tls],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        wait_for(self._answers, START_TIMEOUT_S, f"{self.url} to answer", details=self.log)

    def _answers(self) -> bool:
        assert self.proc is not None
        code = self.proc.poll()
        assert code is None, f"the server exited with {code}:\n{self.log()}"
        try:
            response = requests.get(f"{self.url}/api/v1/openapi.json", timeout=PROBE_TIMEOUT_S, verify=self.verify)
        except requests.ConnectionError:
            return False
        return response.status_code == 200

    def log(self) -> str:
        """Return what the server wrote to its log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """Stop the server with SIGTERM; return its exit status (None if it was not started)."""
        proc, self.proc = self.proc, None
        return stop_process(proc) if proc is not None else None

    def report_uuids(self) -> list[str]:
        """Return the ids of the reports stored in the default SQLite database."""
        assert self.db_url is None, "report_uuids reads the default SQLite database only"
        with sqlite3.connect(self.db) as db:
            return [str(uuid.UUID(str(row[0]))) for row in db.execute("SELECT uuid FROM reports")]


class AgentProcess:
    """The ``telemaint`` agent with a config in ``root`` that reports to ``server`` every second or so."""

    def __init__(self, root: Path, server: ServerProcess, proxy: str | None = None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "agent.yaml"
        proxy_line = f"\n  proxy: {proxy}" if proxy else ""
        self.config.write_text(
            f"""\
device: {{name: e2e-bench, serial: E2E-0001, model: TB-3000, customer: ACME}}
server:
  url: {server.url}{proxy_line}
  timeout: 5s
  intervals: {{heartbeat: 0.5s, health: 1s, inventory: 1h, commands: 1s, jitter: 0}}
state_dir: {root / "state"}
health:
  checks:
    - {{name: mem, type: memory, warning: 100, critical: 100}}
"""
        )
        self.env = clean_environ()
        self.log = root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``telemaint ARGS --config ...`` and return the finished process, whatever its exit status."""
        return subprocess.run(
            [AGENT_COMMAND, *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=CLI_TIMEOUT_S,
        )

    def start(self) -> None:
        """Start the daemon (``telemaint run -vv``), logging to ``root/agent.log``."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [AGENT_COMMAND, "run", "-vv", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def kill9(self) -> None:
        """Kill the daemon with SIGKILL."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> int:
        """Stop the daemon with SIGTERM; return its exit status."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        return stop_process(proc)

    def status(self) -> dict[str, Any]:
        """Return ``telemaint status --json``."""
        return json.loads(self.run("status", "--json").stdout)

    def drained(self) -> bool:
        """Return whether the daemon runs and its outbox is empty."""
        status = self.status()
        return status["daemon"]["running"] and status["outbox"]["total"] == 0

    def queued_uuids(self) -> list[str]:
        """Return the ids of the reports the daemon logged as queued, in order."""
        return [m.group(2) for m in QUEUED_RE.finditer(self.log.read_text(errors="replace"))]
