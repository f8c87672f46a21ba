"""Enrolling a serial again, with the installed ``telemaint`` and ``telemaint-server`` as real
processes on loopback: a reinstall that kept its state proves itself with its key, a machine
without that key needs the vendor's device-bound code, another customer's code takes nothing
over, and a device enrolled without a customer stays hidden from customer viewers until an
admin assigns it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes import AgentProcess, ServerProcess, wait_for

PASSWORD = "correct horse battery staple"
REQUEST_TIMEOUT_S = 10


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "server")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        if agent.proc is not None:
            agent.proc.kill()
            agent.proc.wait()


def new_code(server: ServerProcess, *args: str) -> str:
    return json.loads(server.cli("enrollment-code", *args, "--json"))["code"]


def credentials(agent: AgentProcess) -> dict[str, Any]:
    return json.loads((agent.root / "state" / "credentials.json").read_text())


def token_works(server: ServerProcess, token: str) -> bool:
    response = requests.get(
        f"{server.url}/api/v1/agent/commands", headers={"Authorization": f"Bearer {token}"}, timeout=REQUEST_TIMEOUT_S
    )
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def logged_in(server: ServerProcess, name: str, role: str, customer: str | None = None) -> requests.Session:
    """Add a user with the CLI and return an HTTP session logged in as it."""
    server.cli("user", "add", name, "--role", role, *(["--customer", customer] if customer else []), stdin=PASSWORD)
    session = requests.Session()
    response = session.post(
        f"{server.url}/api/v1/login", json={"name": name, "password": PASSWORD}, timeout=REQUEST_TIMEOUT_S
    )
    assert response.status_code == 200, response.text
    return session


def visible_ids(server: ServerProcess, user: requests.Session) -> list[int]:
    response = user.get(f"{server.url}/api/v1/devices", timeout=REQUEST_TIMEOUT_S)
    assert response.status_code == 200, response.text
    return [d["id"] for d in response.json()["devices"]]


def enroll(agent: AgentProcess, server: ServerProcess, code: str, *extra: str) -> Any:
    return agent.run("enroll", "--server", server.url, "--code", code, *extra)


def test_reinstalls_keep_one_device_with_the_key_or_the_vendors_device_code(
    server: ServerProcess, agents: list[AgentProcess], tmp_path: Path
) -> None:
    machine = AgentProcess(tmp_path / "machine", server)
    agents.append(machine)
    first = enroll(machine, server, new_code(server, "--customer", "ACME"))
    assert first.returncode == 0, first.stderr
    device_id = int(credentials(machine)["device_id"])
    machine.start()
    wait_for(lambda: len(server.report_uuids()) >= 3, 30, "the first reports")

    # A reinstall that kept its state dir: a code without customer plus the device's key.
    kept = enroll(machine, server, new_code(server), "--force")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.strip() == f"enrolled as device {device_id} with {server.url}"
    after = len(server.report_uuids())
    wait_for(lambda: len(server.report_uuids()) >= after + 3, 60, "reports under the new token")
    assert machine.stop() == 0
    token = credentials(machine)["token"]
    assert token_works(server, token)

    # A reinstall on a new disk: same serial, no key. Refused; the device is untouched.
    new_disk = AgentProcess(tmp_path / "new-disk", server)
    agents.append(new_disk)
    refused = enroll(new_disk, server, new_code(server))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("telemaint: enrollment failed: server answered 403 to POST /enroll: ")
    assert f"the proof does not verify with the key of device {device_id}" in refused.stderr
    assert f"telemaint-server enrollment-code --device {device_id}" in refused.stderr
    assert not (new_disk.root / "state" / "credentials.json").exists()
    assert token_works(server, token)

    # The vendor's code for that device: the same device id, the old token dead, reports flow.
    bound = enroll(new_disk, server, new_code(server, "--device", str(device_id)))
    assert bound.returncode == 0, bound.stderr
    assert int(credentials(new_disk)["device_id"]) == device_id
    assert not token_works(server, token)
    before = len(server.report_uuids())
    new_disk.start()
    wait_for(lambda: len(server.report_uuids()) >= before + 3, 60, "reports from the reinstalled machine")
    assert new_disk.stop() == 0
    devices = json.loads(server.cli("device", "list", "--json"))["devices"]
    assert [(d["id"], d["serial"], d["customer"]) for d in devices] == [(device_id, "E2E-0001", "ACME")]


def test_another_customers_code_takes_nothing_and_unassigned_devices_stay_hidden(
    server: ServerProcess, agents: list[AgentProcess], tmp_path: Path
) -> None:
    owner = AgentProcess(tmp_path / "owner", server)
    assert enroll(owner, server, new_code(server, "--customer", "ACME")).returncode == 0
    device_id = int(credentials(owner)["device_id"])
    acme = logged_in(server, "carl", "customer", "ACME")
    globex = logged_in(server, "gina", "customer", "Globex")
    admin = logged_in(server, "root", "admin")

    intruder = AgentProcess(tmp_path / "intruder", server)
    refused = enroll(intruder, server, new_code(server, "--customer", "Globex"))
    assert refused.returncode == 1
    assert f"this code is for customer Globex; device {device_id} belongs to ACME" in refused.stderr
    assert token_works(server, credentials(owner)["token"])
    assert visible_ids(server, acme) == [device_id]
    assert visible_ids(server, globex) == []
    hidden = globex.get(f"{server.url}/api/v1/devices/{device_id}", timeout=REQUEST_TIMEOUT_S)
    assert hidden.status_code == 404
    audit = admin.get(
        f"{server.url}/api/v1/audit", params={"action": "enrollment.refused"}, timeout=REQUEST_TIMEOUT_S
    ).json()["events"]
    assert [(e["actor"], e["details"]["serial"]) for e in audit] == [("device:E2E-0001", "E2E-0001")]
    assert "customer Globex" in audit[0]["details"]["reason"] and audit[0]["address"] == "127.0.0.1"

    # A code without customer: the machine says ACME, but that assigns nothing.
    stray = AgentProcess(tmp_path / "stray", server)
    stray.config.write_text(stray.config.read_text().replace("E2E-0001", "E2E-0002"))
    assert enroll(stray, server, new_code(server)).returncode == 0
    stray_id = int(credentials(stray)["device_id"])
    assert visible_ids(server, acme) == [device_id]
    assert visible_ids(server, globex) == []
    assert stray_id in visible_ids(server, admin)
    unassigned = json.loads(server.cli("device", "list", "--unassigned", "--json"))["devices"]
    assert [(d["id"], d["customer"], d["claimed_customer"]) for d in unassigned] == [(stray_id, None, "ACME")]

    assigned = server.cli("device", "assign", str(stray_id), "--customer", "ACME")
    assert assigned.strip() == f"device {stray_id}: assigned to customer ACME (was unassigned)"
    assert sorted(visible_ids(server, acme)) == sorted([device_id, stray_id])
    assert visible_ids(server, globex) == []
