"""Authorization matrix: who may touch what. Denials are 401 (who are you), 403 (not allowed)
or 404 (not yours: the answer does not reveal that it exists)."""

from __future__ import annotations

import pytest

from tests.server.conftest import PASSWORD, EnrolledDevice, ServerHelper, report

SUPPORT_READS = [
    "/api/v1/devices",
    "/api/v1/devices/{id}",
    "/api/v1/devices/{id}/reports",
    "/api/v1/devices/{id}/reports/6f1c2d9e-4d0b-4a59-9d36-0b9f1e3c2a11",
    "/api/v1/devices/{id}/usage",
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
    for path in (
        "/api/v1/devices/{id}",
        "/api/v1/devices/{id}/reports",
        "/api/v1/devices/{id}/usage",
        "/api/v1/devices/{id}/commands",
    ):
        assert server.client.get(path.format(id=device_b.id), headers=viewer).status_code == 404, path
    other = server.client.post(f"/api/v1/devices/{device_b.id}/commands", json={"kind": "run_checks"}, headers=viewer)
    assert other.status_code == 404
    own = server.client.post(f"/api/v1/devices/{device_a.id}/commands", json={"kind": "run_checks"}, headers=viewer)
    assert own.status_code == 403
    assert server.client.get(f"/api/v1/devices/{device_a.id}/commands", headers=viewer).json() == {"commands": []}


def test_a_report_is_read_only_through_its_own_device(
    server: ServerHelper, two_devices: tuple[EnrolledDevice, EnrolledDevice]
) -> None:
    device_a, device_b = two_devices
    b_report = report("events", {"secret": "globex"}, server.clock())
    server.post_reports(device_b, [b_report])
    viewer = server.user_headers("carl", "customer", customer="Acme")
    support = server.user_headers("anna", "support")
    for headers in (viewer, support):
        through_a = server.client.get(f"/api/v1/devices/{device_a.id}/reports/{b_report['id']}", headers=headers)
        assert through_a.status_code == 404
    own = server.client.get(f"/api/v1/devices/{device_b.id}/reports/{b_report['id']}", headers=viewer)
    assert own.status_code == 404  # not the viewer's customer
    assert server.client.get(f"/api/v1/devices/{device_b.id}/reports/{b_report['id']}", headers=support).json()[
        "payload"
    ] == {"secret": "globex"}


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


ADMIN_WRITES = [("PUT", "/api/v1/devices/{id}/customer", {"customer": "Acme"})]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_WRITES)
def test_admin_writes_refuse_everyone_but_admins(
    server: ServerHelper, two_devices: tuple[EnrolledDevice, EnrolledDevice], method: str, path: str, body: dict
) -> None:
    _, device_b = two_devices
    url = path.format(id=device_b.id)
    for headers in ({}, device_b.headers, {"Authorization": "Bearer tmu_not-a-real-token"}):
        assert server.client.request(method, url, json=body, headers=headers).status_code == 401, headers
    for headers in (server.user_headers("anna", "support"), server.user_headers("carl", "customer", customer="Acme")):
        assert server.client.request(method, url, json=body, headers=headers).status_code == 403
    admin = server.user_headers("root", "admin")
    assert server.client.get(f"/api/v1/devices/{device_b.id}", headers=admin).json()["customer"] == "Globex"
    assert server.client.request(method, url, json=body, headers=admin).status_code == 200


# ---------------------------------------------------------------- users, sessions, user management

LONG_PASSWORD = "long enough password"
ADMIN_ROUTES = [
    ("GET", "/api/v1/users", None),
    ("GET", "/api/v1/users/{uid}", None),
    ("PUT", "/api/v1/users/{uid}/password", {"password": LONG_PASSWORD}),
    ("POST", "/api/v1/users/{uid}/disable", None),
    ("POST", "/api/v1/users/{uid}/enable", None),
    ("GET", "/api/v1/users/{uid}/tokens", None),
    ("DELETE", "/api/v1/users/{uid}/tokens/{tid}", None),
]
OWN_ROUTES = [
    ("GET", "/api/v1/users/me/sessions", None),
    ("DELETE", "/api/v1/users/me/sessions/{sid}", None),
    ("PUT", "/api/v1/users/me/password", {"current_password": "x", "new_password": LONG_PASSWORD}),
    ("GET", "/api/v1/users/me/tokens", None),
    ("POST", "/api/v1/users/me/tokens", {"name": "x"}),
    ("DELETE", "/api/v1/users/me/tokens/{tid}", None),
]


def _call(server: ServerHelper, method: str, path: str, body: object, headers: dict[str, str], **ids: int) -> int:
    url = path.format(**ids)
    return server.client.request(method, url, json=body, headers=headers).status_code


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES + OWN_ROUTES)
def test_user_routes_refuse_no_credentials_and_device_tokens(
    server: ServerHelper, method: str, path: str, body: object
) -> None:
    device = server.enroll()
    for headers in ({}, device.headers, {"Authorization": "Bearer tmu_not-a-real-token"}):
        assert _call(server, method, path, body, headers, uid=1, tid=1, sid=1) == 401, headers


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_user_management_is_for_admins_only(server: ServerHelper, method: str, path: str, body: object) -> None:
    admin = server.user_headers("root", "admin")
    target = server.user("anna", "support")
    for headers in (server.user_headers("sam", "support"), server.user_headers("carl", "customer", customer="Acme")):
        assert _call(server, method, path, body, headers, uid=target.id, tid=1) == 403
    unknown_user = 404 if "{uid}" in path else 200
    assert _call(server, method, path, body, admin, uid=4242, tid=1) == unknown_user


def test_admin_user_routes_answer_404_for_a_token_of_another_user(server: ServerHelper) -> None:
    admin = server.user_headers("root", "admin")
    server.user_headers("anna", "support")
    users = {u["name"]: u["id"] for u in server.client.get("/api/v1/users", headers=admin).json()["users"]}
    (root_token,) = server.client.get(f"/api/v1/users/{users['root']}/tokens", headers=admin).json()["tokens"]
    url = f"/api/v1/users/{users['anna']}/tokens/{root_token['id']}"
    assert server.client.delete(url, headers=admin).status_code == 404


def test_a_user_ends_only_their_own_sessions_and_tokens(server: ServerHelper) -> None:
    server.user("anna", "support")
    bert = server.user_headers("bert", "customer", customer="Acme")
    login = server.client.post("/api/v1/login", json={"name": "anna", "password": PASSWORD})
    assert login.status_code == 200
    (anna_session,) = server.client.get("/api/v1/users/me/sessions").json()["sessions"]
    server.client.cookies.clear()
    (bert_token,) = server.client.get("/api/v1/users/me/tokens", headers=bert).json()["tokens"]
    assert server.client.delete(f"/api/v1/users/me/sessions/{anna_session['id']}", headers=bert).status_code == 404
    assert server.client.get("/api/v1/users/me/sessions", headers=bert).json() == {"sessions": []}
    anna = server.user_headers("anna2", "support")
    assert server.client.delete(f"/api/v1/users/me/tokens/{bert_token['id']}", headers=anna).status_code == 404
    assert server.client.get("/api/v1/users/me", headers=bert).status_code == 200
    # a customer viewer manages their own credentials too
    change = {"current_password": PASSWORD, "new_password": LONG_PASSWORD}
    assert server.client.put("/api/v1/users/me/password", json=change, headers=bert).status_code == 204


def test_logout_needs_no_credentials(server: ServerHelper) -> None:
    assert server.client.post("/api/v1/logout").status_code == 204
