"""Sessions live on the server: a copied cookie dies at logout, password change and disabling."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from server.models import AuditEvent, UserSession
from tests.server.conftest import PASSWORD, ServerHelper

NEW_PASSWORD = "a brand new passphrase"


def _logged_in(server: ServerHelper, name: str, password: str = PASSWORD, **headers: str) -> TestClient:
    client = TestClient(server.client.app, headers=headers)
    response = client.post("/api/v1/login", json={"name": name, "password": password})
    assert response.status_code == 200, response.text
    return client


def _copy_of(client: TestClient) -> TestClient:
    """Return another client holding the same session cookie (a stolen or copied cookie)."""
    thief = TestClient(client.app)
    thief.cookies.set("telemaint_session", client.cookies["telemaint_session"])
    return thief


def _audit(server: ServerHelper, action: str) -> list[AuditEvent]:
    with server.sessionmaker() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def _me(client: TestClient, **kwargs: Any) -> int:
    return client.get("/api/v1/users/me", **kwargs).status_code


def test_a_copied_cookie_is_dead_after_logout(server: ServerHelper) -> None:
    server.user("anna", "support")
    anna = _logged_in(server, "anna")
    thief = _copy_of(anna)
    assert _me(thief) == 200
    assert anna.post("/api/v1/logout").status_code == 204
    assert _me(thief) == 401
    assert _me(anna) == 401
    (logout,) = _audit(server, "logout")
    assert logout.actor == "user:anna"
    with server.sessionmaker() as session:
        assert session.scalars(select(UserSession)).all() == []
    assert TestClient(server.client.app).post("/api/v1/logout").status_code == 204  # without a session too


def test_a_copied_cookie_is_dead_after_a_password_change(server: ServerHelper) -> None:
    server.user("anna", "support")
    anna = _logged_in(server, "anna")
    thief = _copy_of(anna)
    token = anna.post("/api/v1/users/me/tokens", json={"name": "script"}).json()["token"]
    wrong = anna.put("/api/v1/users/me/password", json={"current_password": "guess", "new_password": NEW_PASSWORD})
    assert wrong.status_code == 403
    assert _me(thief) == 200
    changed = anna.put("/api/v1/users/me/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert changed.status_code == 204
    assert _me(thief) == 401
    assert _me(anna) == 200  # the one who changed it got a fresh cookie
    assert _me(TestClient(server.client.app), headers={"Authorization": f"Bearer {token}"}) == 401
    (event,) = _audit(server, "user.password")
    assert (event.actor, event.target) == ("user:anna", "user:anna")
    assert event.details == {"sessions_revoked": 1, "tokens_revoked": 1}
    assert (
        TestClient(server.client.app).post("/api/v1/login", json={"name": "anna", "password": PASSWORD}).status_code
        == 401
    )
    _logged_in(server, "anna", NEW_PASSWORD)


def test_a_new_password_must_be_long_enough(server: ServerHelper) -> None:
    server.user("anna", "support")
    anna = _logged_in(server, "anna")
    short = anna.put("/api/v1/users/me/password", json={"current_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 422
    assert "at least 8 characters" in short.text
    assert _me(anna) == 200


def test_cookies_and_tokens_of_a_disabled_user_stop_at_once(server: ServerHelper) -> None:
    admin = server.user_headers("root", "admin")
    anna_id = server.user("anna", "support").id
    anna = _logged_in(server, "anna")
    token = anna.post("/api/v1/users/me/tokens", json={"name": "script"}).json()["token"]
    disabled = server.client.post(f"/api/v1/users/{anna_id}/disable", headers=admin)
    assert disabled.status_code == 200
    assert disabled.json()["disabled_at"] is not None
    assert (disabled.json()["sessions"], disabled.json()["tokens"]) == (0, 0)
    assert _me(anna) == 401
    assert _me(TestClient(server.client.app), headers={"Authorization": f"Bearer {token}"}) == 401
    assert _audit(server, "user.disable")[0].details == {"sessions_revoked": 1, "tokens_revoked": 1}


def test_sessions_are_listed_with_the_current_one_marked_and_can_be_ended(server: ServerHelper) -> None:
    server.user("anna", "support")
    laptop = _logged_in(server, "anna", **{"User-Agent": "laptop browser"})
    server.clock.advance(60)
    phone = _logged_in(server, "anna", **{"User-Agent": "phone browser"})
    listed = laptop.get("/api/v1/users/me/sessions").json()["sessions"]
    assert [(s["user_agent"], s["current"], s["address"]) for s in listed] == [
        ("phone browser", False, "testclient"),
        ("laptop browser", True, "testclient"),
    ]
    phone_id = listed[0]["id"]
    assert laptop.delete(f"/api/v1/users/me/sessions/{phone_id}").status_code == 204
    assert _me(phone) == 401
    assert _me(laptop) == 200
    assert laptop.delete(f"/api/v1/users/me/sessions/{phone_id}").status_code == 404
    assert [e.details for e in _audit(server, "session.end")] == [{"session": phone_id}]


def test_nobody_ends_another_users_session(server: ServerHelper) -> None:
    server.user("anna", "support")
    server.user("bert", "support")
    anna = _logged_in(server, "anna")
    bert = _logged_in(server, "bert")
    (bert_session,) = bert.get("/api/v1/users/me/sessions").json()["sessions"]
    assert anna.delete(f"/api/v1/users/me/sessions/{bert_session['id']}").status_code == 404
    assert _me(bert) == 200


def test_sessions_expire_and_last_seen_is_touched_at_most_once_a_minute(server: ServerHelper) -> None:
    server.user("anna", "support")
    anna = _logged_in(server, "anna")
    started = server.clock()
    server.clock.advance(30)
    anna.get("/api/v1/users/me")
    (row,) = anna.get("/api/v1/users/me/sessions").json()["sessions"]
    assert row["last_seen_at"] == row["created_at"]
    server.clock.advance(61)
    anna.get("/api/v1/users/me")
    (row,) = anna.get("/api/v1/users/me/sessions").json()["sessions"]
    assert row["last_seen_at"] != row["created_at"]
    server.clock.now = started
    server.clock.advance(12 * 3600 + 1)
    assert _me(anna) == 401
