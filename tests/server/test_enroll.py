"""Enrollment: one-time codes with expiry, one device per serial, validated identity."""

from __future__ import annotations

from sqlalchemy import func, select

from server.models import AuditEvent, Device
from tests.server.conftest import ServerHelper, ssh_public_key


def test_enroll_returns_device_id_token_and_interval(server: ServerHelper) -> None:
    body = server.enroll_body(server.code(customer="Acme"), serial="SN-100")
    response = server.client.post("/api/v1/enroll", json=body)
    assert response.status_code == 201, response.text
    data = response.json()
    assert set(data) == {"device_id", "token", "heartbeat_interval_s"}
    assert data["token"].startswith("tmd_") and len(data["token"]) > 40
    assert data["heartbeat_interval_s"] == 60
    with server.sessionmaker() as session:
        device = session.get(Device, data["device_id"])
        assert device is not None
        assert device.serial == "SN-100"
        assert device.token_hash != data["token"] and data["token"] not in device.token_hash
        assert device.ssh_public_key == " ".join(body["ssh_public_key"].split()[:2])
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "device.enroll")).all()
        assert [a.target for a in audit] == [f"device:{device.id}"]


def test_code_is_accepted_in_lower_case_and_without_dashes(server: ServerHelper) -> None:
    code = server.code().lower().replace("-", "")
    response = server.client.post("/api/v1/enroll", json=server.enroll_body(code))
    assert response.status_code == 201, response.text


def test_expired_code_is_refused_with_reason(server: ServerHelper) -> None:
    code = server.code(ttl_s=60)
    server.clock.advance(61)
    response = server.client.post("/api/v1/enroll", json=server.enroll_body(code))
    assert response.status_code == 403
    assert response.json()["detail"] == "enrollment code expired"


def test_code_works_only_once(server: ServerHelper) -> None:
    code = server.code()
    first = server.client.post("/api/v1/enroll", json=server.enroll_body(code, serial="SN-1"))
    assert first.status_code == 201
    second = server.client.post("/api/v1/enroll", json=server.enroll_body(code, serial="SN-2"))
    assert second.status_code == 403
    assert second.json()["detail"] == "enrollment code already used"


def test_unknown_code_is_refused(server: ServerHelper) -> None:
    response = server.client.post("/api/v1/enroll", json=server.enroll_body("AAAA-BBBB-CCCC"))
    assert response.status_code == 403
    assert response.json()["detail"] == "unknown enrollment code"


def test_same_serial_with_a_code_alone_is_asked_for_proof_and_keeps_its_token(server: ServerHelper) -> None:
    first = server.enroll(serial="SN-7", customer="Acme")
    response = server.client.post(
        "/api/v1/enroll", json=server.enroll_body(server.code(), serial="SN-7", ssh_public_key=ssh_public_key())
    )
    assert response.status_code == 409
    assert set(response.json()) == {"detail", "device_id", "challenge", "expires_at"}
    assert response.json()["device_id"] == first.id
    # nothing changed: the old token works, the key is the old one, there is one device
    assert server.client.get("/api/v1/agent/commands", headers=first.headers).status_code == 200
    with server.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Device)) == 1
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "enrollment.refused")).all()
        assert [(a.target, a.details["serial"]) for a in audit] == [(f"device:{first.id}", "SN-7")]


def test_refused_codes_are_audited_and_made_up_ones_are_not(server: ServerHelper) -> None:
    """A used or expired code is an attempt worth the audit log; a made-up one is anyone's guess
    and must not let an unauthenticated client write to the append-only log without end."""
    for _ in range(20):
        made_up = server.client.post("/api/v1/enroll", json=server.enroll_body("AAAA-BBBB-CCCC", serial="SN-3"))
        assert made_up.status_code == 403 and made_up.json()["detail"] == "unknown enrollment code"
    expired = server.code(ttl_s=60)
    server.clock.advance(61)
    response = server.client.post("/api/v1/enroll", json=server.enroll_body(expired, serial="SN-3"))
    assert response.status_code == 403
    with server.sessionmaker() as session:
        (event,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "enrollment.refused")).all()
        assert (event.actor, event.target, event.address) == ("device:SN-3", "serial:SN-3", "testclient")
        assert event.details["reason"] == "enrollment code expired"


def test_bad_ssh_key_is_422(server: ServerHelper) -> None:
    rsa_like = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user@host"
    wrong_blob = "ssh-ed25519 " + "QUFBQQ=="  # base64 of "AAAA": not an Ed25519 key blob
    for key in (rsa_like, wrong_blob, "ssh-ed25519 not*base64", "", "ssh-ed25519"):
        response = server.client.post("/api/v1/enroll", json=server.enroll_body(server.code(), ssh_public_key=key))
        assert response.status_code == 422, key
        assert "ssh_public_key" in response.json()["detail"][0]["loc"]


def test_enrollment_fields_are_validated(server: ServerHelper) -> None:
    code = server.code()
    for overrides in ({"serial": ""}, {"serial": "x" * 129}, {"name": "a\x00b"}, {"agent_version": 7}, {"extra": 1}):
        response = server.client.post("/api/v1/enroll", json=server.enroll_body(code, **overrides))
        assert response.status_code == 422, overrides
    # none of those used up the code
    assert server.client.post("/api/v1/enroll", json=server.enroll_body(code)).status_code == 201


def test_code_customer_wins_over_the_one_the_machine_names(server: ServerHelper) -> None:
    body = server.enroll_body(server.code(customer="Acme"), serial="SN-9", customer="Other")
    device_id = server.client.post("/api/v1/enroll", json=body).json()["device_id"]
    admin = server.user_headers("root", "admin")
    detail = server.client.get(f"/api/v1/devices/{device_id}", headers=admin).json()
    assert detail["customer"] == "Acme"
