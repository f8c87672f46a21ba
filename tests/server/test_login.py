"""Login: session cookie, API tokens, wrong passwords audited, the limiter that cannot lock a user out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from server.app import create_app
from server.auth import LOGIN_DELAY_FIRST_S, LOGIN_DELAY_MAX_S, check_login_limits, login_delay_s
from server.config import ServerSettings
from server.models import AuditEvent, LoginFailure, User
from tests.processes import ServerProcess
from tests.server.conftest import PASSWORD, ServerHelper

HTTP_TIMEOUT_S = 10


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


def test_a_cross_site_form_can_neither_log_a_browser_in_nor_out(server: ServerHelper) -> None:
    """Login CSRF: another site's form posting the attacker's credentials would put the victim's
    browser in the attacker's account (and what the victim then types would be the attacker's)."""
    server.user("eve", "support")
    server.user("anna", "admin")
    evil = {"Origin": "https://evil.example"}
    forged = server.client.post("/api/v1/login", data={"name": "eve", "password": PASSWORD}, headers=evil)
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    own = server.client.post(
        "/api/v1/login", data={"name": "anna", "password": PASSWORD}, headers={"Origin": "http://testserver"}
    )
    assert own.status_code == 200
    assert server.client.post("/api/v1/logout", headers=evil).status_code == 403
    assert server.client.get("/api/v1/users/me").json()["name"] == "anna"  # still logged in


def test_cookie_is_secure_behind_https(server: ServerHelper) -> None:
    server.user("anna", "support")
    response = server.client.post("https://testserver/api/v1/login", json={"name": "anna", "password": PASSWORD})
    assert "Secure" in response.headers["set-cookie"]


def test_tampered_or_expired_cookie_is_refused(server: ServerHelper) -> None:
    server.user("anna", "support")
    server.client.post("/api/v1/login", json={"name": "anna", "password": PASSWORD})
    value = server.client.cookies["telemaint_session"]
    prefix, random_part = value[:4], value[4:]
    for forged in (prefix + random_part[::-1], value + "x", "tmu_" + random_part, ""):
        server.client.cookies.set("telemaint_session", forged)
        assert server.client.get("/api/v1/users/me").status_code == 401, forged
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


def _login(client: TestClient, name: str, password: str, **headers: str) -> Any:
    return client.post("/api/v1/login", json={"name": name, "password": password}, headers=headers)


def _from(server: ServerHelper, address: str) -> TestClient:
    """Return a client of the same app whose requests come from ``address``."""
    return TestClient(server.client.app, client=(address, 50000))


def test_failed_logins_are_rate_limited_per_user_and_address(server: ServerHelper) -> None:
    server.user("anna", "support")
    for _ in range(5):
        assert _login(server.client, "anna", "guess").status_code == 401
    blocked = _login(server.client, "anna", PASSWORD)
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["retry-after"]) <= 300
    assert blocked.json() == {"detail": f"too many failed logins; try again in {blocked.headers['retry-after']} s"}
    assert _login(server.client, "ANNA ", PASSWORD).status_code == 429  # names are counted case-blind
    server.clock.advance(301)
    assert _login(server.client, "anna", PASSWORD).status_code == 200


def test_failures_from_another_address_do_not_lock_the_user_out(server: ServerHelper) -> None:
    server.user("anna", "support")
    attacker = _from(server, "203.0.113.66")
    for _ in range(5):
        assert _login(attacker, "anna", "guess").status_code == 401
    assert _login(attacker, "anna", PASSWORD).status_code == 429
    # the real user, elsewhere, still gets in (answered a little later), and sees her devices
    office = _from(server, "198.51.100.7")
    assert _login(office, "anna", PASSWORD).status_code == 200
    assert office.get("/api/v1/devices").status_code == 200
    # her success does not lift the attacker's block
    assert _login(attacker, "anna", PASSWORD).status_code == 429


def test_a_name_failing_from_many_addresses_is_slowed_not_blocked(server: ServerHelper) -> None:
    server.user("anna", "support")
    for n in range(12):
        assert _login(_from(server, f"203.0.113.{n + 1}"), "anna", "guess").status_code == 401
    settings = server.client.app.state.settings  # type: ignore[attr-defined]
    with server.sessionmaker() as session:
        verdict = check_login_limits(
            session,
            name="anna",
            address="198.51.100.7",
            now=server.clock(),
            window_s=settings.login_window_s,
            max_failures=settings.login_max_failures,
            address_max_failures=settings.address_max_failures,
        )
    assert verdict.retry_after_s == 0
    assert verdict.delay_s == LOGIN_DELAY_MAX_S
    assert _login(_from(server, "198.51.100.7"), "anna", PASSWORD).status_code == 200


def test_the_delay_grows_with_the_failures_and_is_capped() -> None:
    delays = [login_delay_s(failures, 5) for failures in range(12)]
    assert delays[:5] == [0.0] * 5
    assert delays[5:9] == [LOGIN_DELAY_FIRST_S, 2 * LOGIN_DELAY_FIRST_S, 4 * LOGIN_DELAY_FIRST_S, LOGIN_DELAY_MAX_S]
    assert max(delays) == LOGIN_DELAY_MAX_S == delays[-1]
    assert login_delay_s(10**6, 5) == LOGIN_DELAY_MAX_S


def test_failed_logins_are_rate_limited_per_address_across_names(server: ServerHelper) -> None:
    server.user("anna", "support")
    settings = server.client.app.state.settings  # type: ignore[attr-defined]
    assert settings.address_max_failures == 20
    for n in range(19):
        assert _login(server.client, f"guess{n}", "guess").status_code == 401
    assert _login(server.client, "guess19", "guess").status_code == 401
    blocked = _login(server.client, "anna", PASSWORD)
    assert blocked.status_code == 429
    assert _login(_from(server, "198.51.100.7"), "anna", PASSWORD).status_code == 200


def test_a_successful_login_clears_the_failures_of_its_name_and_address(server: ServerHelper) -> None:
    server.user("anna", "support")
    for _ in range(4):
        _login(server.client, "anna", "guess")
    assert _login(server.client, "anna", PASSWORD).status_code == 200
    for _ in range(4):
        assert _login(server.client, "anna", "guess").status_code == 401
    assert _login(server.client, "anna", PASSWORD).status_code == 200


def test_the_limiter_holds_across_restarts_and_processes(
    server: ServerHelper, settings: ServerSettings, engine: Engine
) -> None:
    server.user("anna", "support")
    for _ in range(5):
        _login(server.client, "anna", "guess")
    restarted = TestClient(create_app(settings, clock=server.clock, engine=engine))
    assert _login(restarted, "anna", PASSWORD).status_code == 429


def test_old_failures_are_pruned(server: ServerHelper) -> None:
    for n in range(3):
        _login(server.client, f"guess{n}", "guess")
    server.clock.advance(301)
    _login(server.client, "late", "guess")
    with server.sessionmaker() as session:
        assert session.scalars(select(LoginFailure.name)).all() == ["late"]


def test_a_disabled_user_cannot_log_in_and_gets_the_wrong_password_answer(server: ServerHelper) -> None:
    anna = server.user("anna", "support")
    with server.sessionmaker() as session:
        session.get(User, anna.id).disabled_at = server.clock()  # type: ignore[union-attr]
        session.commit()
    refused = _login(server.client, "anna", PASSWORD)
    wrong = _login(server.client, "anna", "guess")
    assert refused.status_code == wrong.status_code == 401
    assert refused.json() == wrong.json()
    assert [e.details["reason"] for e in _audit(server, "login.failed")] == ["disabled user", "wrong password"]


def test_forwarded_headers_are_ignored_unless_the_peer_is_a_trusted_proxy(server: ServerHelper) -> None:
    server.user("anna", "support")
    loopback = _from(server, "127.0.0.1")
    _login(loopback, "anna", "guess", **{"X-Forwarded-For": "203.0.113.9"})
    login = _login(loopback, "anna", PASSWORD, **{"X-Forwarded-Proto": "https"})
    assert "Secure" not in login.headers["set-cookie"]
    assert [e.address for e in _audit(server, "login.failed")] == ["127.0.0.1"]


def test_a_trusted_proxy_gives_the_client_address_and_scheme(
    server: ServerHelper, settings: ServerSettings, engine: Engine
) -> None:
    server.user("anna", "support")
    proxied = settings.model_copy(update={"trusted_proxies": ("127.0.0.1/32", "10.0.0.0/8")})
    app = create_app(proxied, clock=server.clock, engine=engine)
    behind_proxy = TestClient(app, client=("127.0.0.1", 50000))
    # the rightmost address that is not a trusted proxy is the client; what it sent is not believed
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 10.1.2.3", "X-Forwarded-Proto": "https"}
    for _ in range(5):
        assert _login(behind_proxy, "anna", "guess", **chain).status_code == 401
    assert _login(behind_proxy, "anna", PASSWORD, **chain).status_code == 429
    elsewhere = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    login = _login(behind_proxy, "anna", PASSWORD, **elsewhere)
    assert login.status_code == 200
    assert "Secure" in login.headers["set-cookie"]
    assert {e.address for e in _audit(server, "login.failed")} == {"203.0.113.9"}
    assert [e.address for e in _audit(server, "login.ok")] == ["198.51.100.7"]
    # a client that is no proxy cannot claim an address
    direct = TestClient(app, client=("192.0.2.50", 50000))
    _login(direct, "nobody", "guess", **{"X-Forwarded-For": "198.51.100.99"})
    assert _audit(server, "login.failed")[-1].address == "192.0.2.50"


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


def _failed_login_addresses(srv: ServerProcess, forwarded_for: str) -> list[str | None]:
    """Fail a login with ``X-Forwarded-For`` against the real server; return the audited addresses."""
    failed = requests.post(
        f"{srv.url}/api/v1/login",
        json={"name": "mallory", "password": "guess"},
        headers={"X-Forwarded-For": forwarded_for},
        timeout=HTTP_TIMEOUT_S,
    )
    assert failed.status_code == 401
    admin = requests.Session()
    assert admin.post(f"{srv.url}/api/v1/login", json={"name": "ada", "password": PASSWORD}, timeout=HTTP_TIMEOUT_S).ok
    events = admin.get(f"{srv.url}/api/v1/audit", params={"action": "login.failed"}, timeout=HTTP_TIMEOUT_S).json()
    return [e["address"] for e in events["events"]]


@pytest.mark.integration
@pytest.mark.parametrize("trusted", [None, "127.0.0.1"])
def test_the_real_server_believes_x_forwarded_for_only_from_a_trusted_proxy(
    tmp_path: Path, trusted: str | None
) -> None:
    env = {"TELEMAINT_SERVER_TRUSTED_PROXIES": trusted} if trusted else {}
    with ServerProcess(tmp_path / "server", env=env) as srv:
        srv.cli("user", "add", "ada", "--role", "admin", stdin=PASSWORD + "\n")
        addresses = _failed_login_addresses(srv, "203.0.113.9")
    assert addresses == (["203.0.113.9"] if trusted else ["127.0.0.1"])
