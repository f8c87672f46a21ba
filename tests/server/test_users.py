"""User management by admins, through the API and the dashboard: every change audited."""

from __future__ import annotations

import re
import threading

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from server.models import AuditEvent, User
from server.users import UserChangeRefused, disable_user
from tests.server.conftest import PASSWORD, ServerHelper
from tests.server.test_dashboard import csrf_token_of, log_in

NEW_PASSWORD = "a brand new passphrase"


def _audit(server: ServerHelper) -> list[tuple[str, str, str]]:
    with server.sessionmaker() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    return [(e.actor, e.action, e.target) for e in events if not e.action.startswith("login.")]


def test_admins_list_users_with_their_state_and_credentials(server: ServerHelper) -> None:
    admin = server.user_headers("root", "admin")
    server.user_headers("carl", "customer", customer="Acme")
    listed = server.client.get("/api/v1/users", headers=admin).json()["users"]
    assert [(u["name"], u["role"], u["customer"], u["disabled_at"], u["tokens"]) for u in listed] == [
        ("carl", "customer", "Acme", None, 1),
        ("root", "admin", None, None, 1),
    ]
    one = server.client.get(f"/api/v1/users/{listed[0]['id']}", headers=admin)
    assert one.json() == listed[0]
    assert server.client.get("/api/v1/users/4242", headers=admin).status_code == 404


def test_disable_and_enable_a_user(server: ServerHelper) -> None:
    admin = server.user_headers("root", "admin")
    anna = server.user("anna", "support")
    assert server.client.post(f"/api/v1/users/{anna.id}/disable", headers=admin).status_code == 200
    again = server.client.post(f"/api/v1/users/{anna.id}/disable", headers=admin)
    assert again.status_code == 409 and "disabled already" in again.json()["detail"]
    assert server.client.post("/api/v1/login", json={"name": "anna", "password": PASSWORD}).status_code == 401
    enabled = server.client.post(f"/api/v1/users/{anna.id}/enable", headers=admin)
    assert enabled.status_code == 200 and enabled.json()["disabled_at"] is None
    assert server.client.post(f"/api/v1/users/{anna.id}/enable", headers=admin).status_code == 409
    assert server.client.post("/api/v1/login", json={"name": "anna", "password": PASSWORD}).status_code == 200
    assert _audit(server) == [("user:root", "user.disable", "user:anna"), ("user:root", "user.enable", "user:anna")]


def test_an_admin_cannot_disable_themselves_or_the_last_enabled_admin(server: ServerHelper) -> None:
    root = server.user_headers("root", "admin")
    second = server.user_headers("ada", "admin")
    ids = {u["name"]: u["id"] for u in server.client.get("/api/v1/users", headers=root).json()["users"]}
    itself = server.client.post(f"/api/v1/users/{ids['root']}/disable", headers=root)
    assert itself.status_code == 409 and itself.json() == {"detail": "you cannot disable yourself"}
    assert server.client.post(f"/api/v1/users/{ids['ada']}/disable", headers=root).status_code == 200
    assert server.client.get("/api/v1/users", headers=second).status_code == 401  # ada's token is gone
    assert server.client.get(f"/api/v1/users/{ids['root']}", headers=root).json()["disabled_at"] is None


def test_two_admins_disabling_each_other_at_once_leave_one_enabled(server: ServerHelper) -> None:
    for attempt in range(5):
        names = (f"root{attempt}", f"ada{attempt}")
        for name in names:
            server.user(name, "admin")
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def disable(target: str, actor: str, barrier: threading.Barrier, outcomes: list[str]) -> None:
            with server.sessionmaker() as session:
                user = session.scalar(select(User).where(User.name == target))
                by = session.scalar(select(User).where(User.name == actor))
                assert user is not None and by is not None
                barrier.wait()
                try:
                    disable_user(session, user, now=server.clock(), actor=f"user:{actor}", by=by)
                    session.commit()
                    outcomes.append("disabled")
                except UserChangeRefused as exc:
                    outcomes.append(str(exc))
                except OperationalError:  # PostgreSQL's deadlock detector may end one; never both
                    outcomes.append("retry")

        threads = [threading.Thread(target=disable, args=(*pair, barrier, outcomes)) for pair in (names, names[::-1])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        with server.sessionmaker() as session:
            enabled = session.scalars(
                select(User.name).where(User.role == "admin", User.disabled_at.is_(None), User.name.in_(names))
            ).all()
            # Leave one enabled admin in all: the next round's pair are then not the last ones.
            for user in session.scalars(select(User).where(User.name.in_(names))):
                user.role = "support"
            session.commit()
        assert len(enabled) == 1, (attempt, outcomes)
        assert "disabled" in outcomes, outcomes


def test_an_admin_sets_a_password_and_the_users_credentials_end(server: ServerHelper) -> None:
    admin = server.user_headers("root", "admin")
    anna_token = server.user_headers("anna", "support")
    ids = {u["name"]: u["id"] for u in server.client.get("/api/v1/users", headers=admin).json()["users"]}
    short = server.client.put(f"/api/v1/users/{ids['anna']}/password", json={"password": "short"}, headers=admin)
    assert short.status_code == 422
    done = server.client.put(f"/api/v1/users/{ids['anna']}/password", json={"password": NEW_PASSWORD}, headers=admin)
    assert done.status_code == 204
    assert server.client.get("/api/v1/users/me", headers=anna_token).status_code == 401
    login = server.client.post("/api/v1/login", json={"name": "anna", "password": NEW_PASSWORD})
    assert login.status_code == 200
    own = server.client.put(f"/api/v1/users/{ids['root']}/password", json={"password": NEW_PASSWORD}, headers=admin)
    assert own.status_code == 409 and "with the current one" in own.json()["detail"]
    with server.sessionmaker() as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "user.password"))
    assert event is not None and event.actor == "user:root" and event.target == "user:anna"
    assert event.details == {"sessions_revoked": 0, "tokens_revoked": 1}


def test_an_admin_lists_and_revokes_a_users_tokens(server: ServerHelper) -> None:
    admin = server.user_headers("root", "admin")
    anna = server.user_headers("anna", "support")
    ids = {u["name"]: u["id"] for u in server.client.get("/api/v1/users", headers=admin).json()["users"]}
    (token,) = server.client.get(f"/api/v1/users/{ids['anna']}/tokens", headers=admin).json()["tokens"]
    (root_token,) = server.client.get(f"/api/v1/users/{ids['root']}/tokens", headers=admin).json()["tokens"]
    wrong_user = server.client.delete(f"/api/v1/users/{ids['anna']}/tokens/{root_token['id']}", headers=admin)
    assert wrong_user.status_code == 404
    revoked = server.client.delete(f"/api/v1/users/{ids['anna']}/tokens/{token['id']}", headers=admin)
    assert revoked.status_code == 204
    assert server.client.get("/api/v1/users/me", headers=anna).status_code == 401
    assert server.client.get("/api/v1/users/me", headers=admin).status_code == 200
    assert _audit(server)[-1] == ("user:root", "api_token.revoke", f"api_token:{token['id']}")


# ---------------------------------------------------------------- dashboard


def test_the_users_page_is_for_admins_and_disables_with_csrf(server: ServerHelper) -> None:
    server.user("ada", "admin")
    anna_id = server.user("anna", "support").id
    anna = TestClient(server.client.app)
    log_in(anna, "anna")
    assert anna.get("/users").status_code == 403
    assert anna.get(f"/users/{anna_id}").status_code == 403
    assert 'href="/users"' not in anna.get("/").text

    admin = server.client
    log_in(admin, "ada")
    page = admin.get("/users")
    assert page.status_code == 200
    assert re.findall(r'<tr class="user" data-name="([^"]+)" data-state="(\w+)"', page.text) == [
        ("ada", "enabled"),
        ("anna", "enabled"),
    ]
    refused = admin.post(f"/users/{anna_id}/disable", data={"csrf_token": "0" * 64}, follow_redirects=False)
    assert refused.status_code == 403
    assert anna.get("/", follow_redirects=False).status_code == 200
    done = admin.post(
        f"/users/{anna_id}/disable", data={"csrf_token": csrf_token_of(page.text)}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"] == f"/users/{anna_id}?done=disabled"
    assert "The user was disabled" in admin.get(done.headers["location"]).text
    assert anna.get("/", follow_redirects=False).headers["location"] == "/login"
    assert admin.get("/users/4242").status_code == 404
    assert admin.get("/users/nope").status_code == 404


def test_an_admin_cannot_disable_themselves_on_the_dashboard(server: ServerHelper) -> None:
    ada_id = server.user("ada", "admin").id
    log_in(server.client, "ada")
    token = csrf_token_of(server.client.get("/users").text)
    response = server.client.post(f"/users/{ada_id}/disable", data={"csrf_token": token})
    assert response.status_code == 409
    assert "You cannot disable yourself." in response.text


def test_an_admin_sets_a_password_on_the_dashboard(server: ServerHelper) -> None:
    server.user("ada", "admin")
    anna_id = server.user("anna", "support").id
    log_in(server.client, "ada")
    page = server.client.get(f"/users/{anna_id}")
    token = csrf_token_of(page.text)
    short = server.client.post(f"/users/{anna_id}/password", data={"csrf_token": token, "password": "short"})
    assert short.status_code == 400 and "must have at least 8 characters" in short.text
    done = server.client.post(
        f"/users/{anna_id}/password", data={"csrf_token": token, "password": NEW_PASSWORD}, follow_redirects=False
    )
    assert done.status_code == 303
    other = TestClient(server.client.app)
    assert log_in(other, "anna", NEW_PASSWORD).status_code == 303


def test_your_account_page_lists_sessions_and_ends_one(server: ServerHelper) -> None:
    server.user("sam", "support")
    phone = TestClient(server.client.app, headers={"User-Agent": "phone browser"})
    log_in(phone, "sam")
    laptop = server.client
    log_in(laptop, "sam")
    page = laptop.get("/account")
    assert page.status_code == 200
    rows = re.findall(r'<tr class="session" data-id="(\d+)"( data-current="yes")?>', page.text)
    assert len(rows) == 2 and [current for _, current in rows] == [' data-current="yes"', ""]
    phone_id = rows[1][0]
    token = csrf_token_of(page.text)
    done = laptop.post(f"/account/sessions/{phone_id}/end", data={"csrf_token": token}, follow_redirects=False)
    assert done.headers["location"] == "/account?done=ended"
    assert phone.get("/account", follow_redirects=False).headers["location"] == "/login?next=%2Faccount"
    own = laptop.post(f"/account/sessions/{rows[0][0]}/end", data={"csrf_token": token}, follow_redirects=False)
    assert own.headers["location"] == "/login"
    assert laptop.get("/", follow_redirects=False).status_code == 303


def test_changing_your_password_on_the_dashboard_needs_the_current_one(server: ServerHelper) -> None:
    server.user("sam", "support")
    log_in(server.client, "sam")
    thief = TestClient(server.client.app)
    thief.cookies.set("telemaint_session", server.client.cookies["telemaint_session"])
    token = csrf_token_of(server.client.get("/account").text)
    form = {"csrf_token": token, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD}
    wrong = server.client.post("/account/password", data={**form, "current_password": "guess"})
    assert wrong.status_code == 403 and "The current password is wrong." in wrong.text
    mismatch = server.client.post(
        "/account/password", data={**form, "current_password": PASSWORD, "repeat_password": "other"}
    )
    assert mismatch.status_code == 400 and "do not match" in mismatch.text
    done = server.client.post("/account/password", data={**form, "current_password": PASSWORD}, follow_redirects=False)
    assert done.headers["location"] == "/account?done=password"
    after = server.client.get(done.headers["location"], follow_redirects=False)
    assert after.status_code == 200 and "Your password was changed" in after.text  # logged in with a new cookie
    assert thief.get("/", follow_redirects=False).status_code == 303
