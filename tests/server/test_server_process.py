"""The installed ``telemaint-server`` under uvicorn on a loopback port, driven with requests."""

from __future__ import annotations

import datetime as dt
import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.processes import ServerProcess
from tests.server.conftest import health, inventory, ssh_public_key
from tests.tls import write_self_signed_cert

pytestmark = pytest.mark.integration

STOP_TIMEOUT_S = 15
HTTP_TIMEOUT_S = 10


@pytest.fixture(params=["http", "https"])
def running_server(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    tls = write_self_signed_cert(tmp_path / "tls") if request.param == "https" else None
    with ServerProcess(tmp_path / "state", db_url=db_url, tls=tls) as server:
        yield server


def test_enroll_and_report_against_the_real_server(running_server: ServerProcess) -> None:
    srv = running_server
    code = json.loads(srv.cli("enrollment-code", "--customer", "Acme", "--json"))["code"]
    enroll = {
        "code": code,
        "name": "press 7",
        "serial": "SN-PROC-1",
        "model": "P7",
        "ssh_public_key": ssh_public_key(),
        "agent_version": "0.1.0",
    }
    response = requests.post(f"{srv.url}/api/v1/enroll", json=enroll, timeout=HTTP_TIMEOUT_S, verify=srv.verify)
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
        f"{srv.url}/api/v1/agent/reports",
        json={"reports": reports},
        headers=headers,
        timeout=HTTP_TIMEOUT_S,
        verify=srv.verify,
    )
    assert posted.status_code == 200, posted.text
    assert posted.json() == {"acked": [r["id"] for r in reports]}

    srv.cli("user", "add", "anna", "--role", "support", stdin="long enough password\n")
    session = requests.Session()
    login = session.post(
        f"{srv.url}/api/v1/login",
        json={"name": "anna", "password": "long enough password"},
        timeout=HTTP_TIMEOUT_S,
        verify=srv.verify,
    )
    assert login.status_code == 200, login.text
    assert ("Secure" in login.headers["set-cookie"]) == srv.url.startswith("https")
    devices = session.get(f"{srv.url}/api/v1/devices", timeout=HTTP_TIMEOUT_S, verify=srv.verify).json()
    devices = devices["devices"]
    assert [(d["serial"], d["status"], d["health_status"], d["customer"]) for d in devices] == [
        ("SN-PROC-1", "online", "WARNING", "Acme")
    ]
    # the server stops cleanly on SIGTERM (uvicorn finishes, then re-raises the signal)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=STOP_TIMEOUT_S) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in srv.log()
