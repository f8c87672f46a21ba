"""Login: session cookie, API tokens, wrong passwords audited, attempts rate-limited."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from server.models import AuditEvent
from tests.server.conftest import PASSWORD, ServerHelper


def _audit(server: ServerHelper, action: str) -> list[AuditEvent]:
    with server.sessionmaker() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_json_login_sets_a_hardened_session_cookie(server: ServerHelper) -> None:
    server.user("anna", "support")
    response = server.client.post("/api/v1/login", json={"name": "anna", "password": PASSWORD})
    assert response.status_code == 200, response.text
    assert response.json() == {"id": 1, "name": "anna", "role": "support", "customer": None}
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("telemaint_session=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=43200" in cookie
    assert "Secure" not in cookie  # plain http test client; https gets Secure
    assert server.client.get("/api/v1/users/me").json()["name"] == "anna"
    assert server.client.get("/api/v1/devices").status_code == 200
    assert [e.actor for e in _audit(server, "login.ok")] == ["user:anna"]

    assert server.client.post("/api/v1/logout").status_code == 204
    assert server.client.get("/api/v1/users/me").status_code == 401


def test_form_login_works(server: ServerHelper) -> None:
    server.user("anna", "admin")
    response = server.client.post("/api/v1/login", data={"name": "anna", "password": PASSWORD})
    assert response.status_code == 200
    assert server.client.get("/api/v1/audit").status_code == 200


def test_cookie_is_secure_behind_https(server: ServerHelper) -> None:
    server.user("anna", "support")
    response = server.client.post("https://testserver/api/v1/login", json={"name": "anna", "password": PASSWORD})
    assert "Secure" in response.headers["set-cookie"]


def test_tampered_or_expired_cookie_is_refused(server: ServerHelper) -> None:
    server.user("anna", "support")
    server.client.post("/api/v1/login", json={"name": "anna", "password": PASSWORD})
    value = server.client.cookies["telemaint_session"]
    payload, signature = value.split(".")
    server.client.cookies.set("telemaint_session", payload + "." + signature[::-1])
    assert server.client.get("/api/v1/users/me").status_code == 401
    server.client.cookies.set("telemaint_session", value)
    assert server.client.get("/api/v1/users/me").status_code == 200
    server.clock.advance(12 * 3600 + 1)
    assert server.client.get("/api/v1/users/me").status_code == 401


def test_wrong_password_is_401_and_audited(server: ServerHelper) -> None:
    server.user("anna", "support")
    response = server.client.post("/api/v1/login", json={"name": "anna", "password": "guess"})
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    unknown = server.client.post("/api/v1/login", json={"name": "nobody", "password": "guess"})
    assert unknown.status_code == 401
    assert unknown.json() == response.json()  # no hint which one was wrong
    failed = _audit(server, "login.failed")
    assert [(e.target, e.details["reason"], e.address) for e in failed] == [
        ("user:anna", "wrong password", "testclient"),
        ("user:nobody", "unknown user", "testclient"),
    ]


def test_failed_logins_are_rate_limited_per_user(server: ServerHelper) -> None:
    server.user("anna", "support")
    for _ in range(5):
        assert server.client.post("/api/v1/login", json={"name": "anna", "password": "guess"}).status_code == 401
    blocked = server.client.post("/api/v1/login", json={"name": "anna", "password": PASSWORD})
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["retry-after"]) <= 300
    server.clock.advance(301)
    assert server.client.post("/api/v1/login", json={"name": "anna", "password": PASSWORD}).status_code == 200


def test_failed_logins_are_rate_limited_per_address(server: ServerHelper) -> None:
    server.user("anna", "support")
    for n in range(5):
        server.client.post("/api/v1/login", json={"name": f"guess{n}", "password": "guess"})
    blocked = server.client.post("/api/v1/login", json={"name": "anna", "password": PASSWORD})
    assert blocked.status_code == 429


def test_api_token_lifecycle(server: ServerHelper) -> None:
    server.user("anna", "support")
    server.client.post("/api/v1/login", json={"name": "anna", "password": PASSWORD})
    created = server.client.post("/api/v1/users/me/tokens", json={"name": "ci script"})
    assert created.status_code == 201
    token = created.json()["token"]
    assert token.startswith("tmu_")
    server.client.cookies.clear()
    headers = {"Authorization": f"Bearer {token}"}
    assert server.client.get("/api/v1/users/me", headers=headers).json()["name"] == "anna"
    listed = server.client.get("/api/v1/users/me/tokens", headers=headers).json()["tokens"]
    assert [(t["name"], t["last_used_at"] is not None) for t in listed] == [("ci script", True)]
    assert "token" not in listed[0]
    assert server.client.delete(f"/api/v1/users/me/tokens/{listed[0]['id']}", headers=headers).status_code == 204
    assert server.client.get("/api/v1/users/me", headers=headers).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"name": "anna"},
        {"name": "", "password": "x"},
        {"name": ["anna"], "password": "x"},
        {"name": "a\x00", "password": "x"},
    ],
)
def test_malformed_login_is_422(server: ServerHelper, body: dict[str, object]) -> None:
    assert server.client.post("/api/v1/login", json=body).status_code == 422


def test_login_needs_json_or_a_form(server: ServerHelper) -> None:
    response = server.client.post("/api/v1/login", content=b"name=anna", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    garbage = server.client.post("/api/v1/login", content=b"{nope", headers={"content-type": "application/json"})
    assert garbage.status_code == 400
