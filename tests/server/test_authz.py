"""Authorization matrix: who may touch what. Denials are 401 (who are you), 403 (not allowed)
or 404 (not yours: the answer does not reveal that it exists)."""

from __future__ import annotations

import pytest

from tests.server.conftest import EnrolledDevice, ServerHelper, report

SUPPORT_READS = [
    "/api/v1/devices",
    "/api/v1/devices/{id}",
    "/api/v1/devices/{id}/reports",
    "/api/v1/devices/{id}/commands",
    "/api/v1/users/me",
    "/api/v1/audit",
]


@pytest.fixture
def two_devices(server: ServerHelper) -> tuple[EnrolledDevice, EnrolledDevice]:
    return server.enroll(serial="A-1", customer="Acme"), server.enroll(serial="B-2", customer="Globex")


def test_device_cannot_post_a_result_for_another_devices_command(
    server: ServerHelper, two_devices: tuple[EnrolledDevice, EnrolledDevice]
) -> None:
    device_a, device_b = two_devices
    support = server.user_headers("anna", "support")
    command = server.client.post(
        f"/api/v1/devices/{device_b.id}/commands", json={"kind": "run_checks"}, headers=support
    )
    command_id = command.json()["id"]
    body = {"status": "done", "message": "forged"}
    response = server.client.post(f"/api/v1/agent/commands/{command_id}/result", json=body, headers=device_a.headers)
    assert response.status_code == 404
    # A does not get B's commands either, and B's command is untouched
    assert server.client.get("/api/v1/agent/commands", headers=device_a.headers).json() == {"commands": []}
    listed = server.client.get(f"/api/v1/devices/{device_b.id}/commands", headers=support).json()
    assert listed["commands"][0]["status"] == "queued"
    missing = server.client.post("/api/v1/agent/commands/999999/result", json=body, headers=device_a.headers)
    assert missing.status_code == 404


def test_reports_are_stored_for_the_token_owner_only(
    server: ServerHelper, two_devices: tuple[EnrolledDevice, EnrolledDevice]
) -> None:
    device_a, device_b = two_devices
    admin = server.user_headers("root", "admin")
    server.post_reports(device_a, [report("heartbeat", {"agent_version": "9.9"}, server.clock())])
    b = server.client.get(f"/api/v1/devices/{device_b.id}", headers=admin).json()
    assert b["agent_version"] == "0.1.0" and b["last_seen_at"] is None


@pytest.mark.parametrize("path", SUPPORT_READS)
def test_support_endpoints_refuse_a_device_token(
    server: ServerHelper, two_devices: tuple[EnrolledDevice, EnrolledDevice], path: str
) -> None:
    device_a, _ = two_devices
    response = server.client.get(path.format(id=device_a.id), headers=device_a.headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", SUPPORT_READS)
def test_support_endpoints_refuse_no_credentials(
    server: ServerHelper, two_devices: tuple[EnrolledDevice, EnrolledDevice], path: str
) -> None:
    device_a, _ = two_devices
    assert server.client.get(path.format(id=device_a.id)).status_code == 401


def test_agent_endpoints_refuse_no_credentials_user_tokens_and_unknown_tokens(server: ServerHelper) -> None:
    device = server.enroll()
    support = server.user_headers("anna", "support")
    bodies = {"/api/v1/agent/reports": {"reports": []}, "/api/v1/agent/commands/1/result": {"status": "done"}}
    for headers in ({}, support, {"Authorization": "Bearer tmd_not-a-real-token"}, {"Authorization": "Basic eDp5"}):
        assert server.client.get("/api/v1/agent/commands", headers=headers).status_code == 401, headers
        for path, body in bodies.items():
            assert server.client.post(path, json=body, headers=headers).status_code == 401, (path, headers)
    assert server.client.get("/api/v1/agent/commands", headers=device.headers).status_code == 200


def test_customer_viewer_sees_only_its_customer(
    server: ServerHelper, two_devices: tuple[EnrolledDevice, EnrolledDevice]
) -> None:
    device_a, device_b = two_devices
    viewer = server.user_headers("carl", "customer", customer="Acme")
    listed = server.client.get("/api/v1/devices", headers=viewer).json()
    assert [d["id"] for d in listed["devices"]] == [device_a.id]
    assert server.client.get(f"/api/v1/devices/{device_a.id}", headers=viewer).status_code == 200
    for path in ("/api/v1/devices/{id}", "/api/v1/devices/{id}/reports", "/api/v1/devices/{id}/commands"):
        assert server.client.get(path.format(id=device_b.id), headers=viewer).status_code == 404, path
    other = server.client.post(f"/api/v1/devices/{device_b.id}/commands", json={"kind": "run_checks"}, headers=viewer)
    assert other.status_code == 404
    own = server.client.post(f"/api/v1/devices/{device_a.id}/commands", json={"kind": "run_checks"}, headers=viewer)
    assert own.status_code == 403
    assert server.client.get(f"/api/v1/devices/{device_a.id}/commands", headers=viewer).json() == {"commands": []}


def test_only_admins_read_the_audit_log(server: ServerHelper) -> None:
    server.enroll()
    admin = server.user_headers("root", "admin")
    assert server.client.get("/api/v1/audit", headers=server.user_headers("anna", "support")).status_code == 403
    viewer = server.user_headers("carl", "customer", customer="Acme")
    assert server.client.get("/api/v1/audit", headers=viewer).status_code == 403
    events = server.client.get("/api/v1/audit", headers=admin).json()["events"]
    assert [e["action"] for e in events] == ["device.enroll"]


def test_unknown_device_is_404_and_absurd_ids_are_422(server: ServerHelper) -> None:
    admin = server.user_headers("root", "admin")
    assert server.client.get("/api/v1/devices/4242", headers=admin).status_code == 404
    for device_id in ("0", "-1", "abc", str(2**63)):
        assert server.client.get(f"/api/v1/devices/{device_id}", headers=admin).status_code == 422, device_id
