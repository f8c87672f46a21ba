"""The installed ``telemaint-server`` under uvicorn on a loopback port, driven with requests."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.server.conftest import free_port, health, inventory, ssh_public_key
from tests.tls import write_self_signed_cert

pytestmark = pytest.mark.integration

SERVER_COMMAND = str(Path(sys.executable).with_name("telemaint-server"))
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
HTTP_TIMEOUT_S = 10


def _cli(*argv: str, env: dict[str, str], stdin: str | None = None) -> str:
    done = subprocess.run(
        [SERVER_COMMAND, *argv], input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _self_signed_cert(directory: Path) -> tuple[Path, Path]:
    return write_self_signed_cert(directory)


class RunningServer:
    def __init__(
        self, process: subprocess.Popen[str], base_url: str, verify: str | bool, env: dict[str, str], log_path: Path
    ):
        self.log_path = log_path
        self.process = process
        self.base_url = base_url
        self.verify = verify
        self.env = env


@pytest.fixture(params=["http", "https"])
def running_server(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMAINT_SERVER_")}
    env["TELEMAINT_SERVER_DB"] = db_url
    env["TELEMAINT_SERVER_DATA_DIR"] = str(tmp_path / "state")
    _cli("init", env=env)
    port = free_port()
    argv = [SERVER_COMMAND, "run", "--host", "127.0.0.1", "--port", str(port)]
    verify: str | bool = True
    if request.param == "https":
        cert, key = _self_signed_cert(tmp_path)
        argv += ["--tls-cert", str(cert), "--tls-key", str(key)]
        verify = str(cert)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=env)
    base_url = f"{request.param}://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}: {log_path.read_text()}")
            try:
                requests.get(f"{base_url}/api/v1/openapi.json", timeout=1, verify=verify)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer within {START_TIMEOUT_S} s: {log_path.read_text()}")
                time.sleep(0.1)
        yield RunningServer(process, base_url, verify, env, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_enroll_and_report_against_the_real_server(running_server: RunningServer) -> None:
    srv = running_server
    code = json.loads(_cli("enrollment-code", "--customer", "Acme", "--json", env=srv.env))["code"]
    enroll = {
        "code": code,
        "name": "press 7",
        "serial": "SN-PROC-1",
        "model": "P7",
        "ssh_public_key": ssh_public_key(),
        "agent_version": "0.1.0",
    }
    response = requests.post(f"{srv.base_url}/api/v1/enroll", json=enroll, timeout=HTTP_TIMEOUT_S, verify=srv.verify)
    assert response.status_code == 201, response.text
    identity = response.json()
    headers = {"Authorization": f"Bearer {identity['token']}"}
    now = dt.datetime.now(dt.UTC).isoformat()
    reports = [
        {"id": str(uuid.uuid4()), "kind": "heartbeat", "created_at": now, "payload": {"agent_version": "0.1.0"}},
        {"id": str(uuid.uuid4()), "kind": "inventory", "created_at": now, "payload": inventory({"camera": "2.3.1"})},
        {"id": str(uuid.uuid4()), "kind": "health", "created_at": now, "payload": health("WARNING")},
    ]
    posted = requests.post(
        f"{srv.base_url}/api/v1/agent/reports",
        json={"reports": reports},
        headers=headers,
        timeout=HTTP_TIMEOUT_S,
        verify=srv.verify,
    )
    assert posted.status_code == 200, posted.text
    assert posted.json() == {"acked": [r["id"] for r in reports]}

    _cli("user", "add", "anna", "--role", "support", env=srv.env, stdin="long enough password\n")
    session = requests.Session()
    login = session.post(
        f"{srv.base_url}/api/v1/login",
        json={"name": "anna", "password": "long enough password"},
        timeout=HTTP_TIMEOUT_S,
        verify=srv.verify,
    )
    assert login.status_code == 200, login.text
    assert ("Secure" in login.headers["set-cookie"]) == srv.base_url.startswith("https")
    devices = session.get(f"{srv.base_url}/api/v1/devices", timeout=HTTP_TIMEOUT_S, verify=srv.verify).json()
    devices = devices["devices"]
    assert [(d["serial"], d["status"], d["health_status"], d["customer"]) for d in devices] == [
        ("SN-PROC-1", "online", "WARNING", "Acme")
    ]
    # the server stops cleanly on SIGTERM (uvicorn finishes, then re-raises the signal)
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(timeout=STOP_TIMEOUT_S) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in srv.log_path.read_text()
