"""Device identity: an enrolled serial enrolls again only with proof of the same machine (a
signature with its current key over a server challenge) or with a code issued for that device;
no code moves a device between customers; a code without a customer leaves a new device
unassigned until an admin assigns it."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from agent.identity import ensure_device_key, sign_with_device_key
from agent.uplink import enrollment_proof_message as agent_proof_message
from server.api.models import enrollment_proof_message
from server.cli import main
from server.enrollment import CHALLENGE_TTL_S, create_enrollment_code
from server.models import AuditEvent, Device, EnrollmentCode
from tests.server.conftest import EnrolledDevice, ServerHelper

ENROLL = "/api/v1/enroll"


@dataclass
class Machine:
    """A machine with its own Ed25519 key, as the agent keeps it in its state directory."""

    serial: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_key(self) -> str:
        raw = self.key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return raw.decode()

    def body(self, server: ServerHelper, code: str, **overrides: Any) -> dict[str, Any]:
        return server.enroll_body(code, self.serial, ssh_public_key=self.public_key, **overrides)

    def sign(self, challenge: str, registering: str | None = None) -> str:
        message = enrollment_proof_message(challenge, self.serial, registering or self.public_key)
        return base64.b64encode(self.key.sign(message)).decode()


def enroll_new(
    server: ServerHelper, machine: Machine, code_customer: str | None = None, **overrides: Any
) -> EnrolledDevice:
    """Enroll a serial the server has not seen with a code of ``code_customer``."""
    response = server.client.post(ENROLL, json=machine.body(server, server.code(code_customer), **overrides))
    assert response.status_code == 201, response.text
    data = response.json()
    return EnrolledDevice(id=data["device_id"], token=data["token"], serial=machine.serial)


def token_works(server: ServerHelper, token: str) -> bool:
    response = server.client.get("/api/v1/agent/commands", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def visible_ids(server: ServerHelper, headers: dict[str, str]) -> list[int]:
    return [d["id"] for d in server.client.get("/api/v1/devices", headers=headers).json()["devices"]]


def refusals(server: ServerHelper) -> list[AuditEvent]:
    with server.sessionmaker() as session:
        return list(
            session.scalars(select(AuditEvent).where(AuditEvent.action == "enrollment.refused").order_by(AuditEvent.id))
        )


def stored_device(server: ServerHelper, device_id: int) -> Device:
    with server.sessionmaker() as session:
        device = session.get(Device, device_id)
        assert device is not None
        session.expunge(device)
        return device


def code_used(server: ServerHelper, code: str) -> bool:
    from server.auth import hash_token
    from server.enrollment import normalize_code

    with server.sessionmaker() as session:
        row = session.scalar(select(EnrollmentCode).where(EnrollmentCode.code_hash == hash_token(normalize_code(code))))
        assert row is not None
        return row.used_at is not None


def ask_challenge(server: ServerHelper, machine: Machine, code: str, **overrides: Any) -> dict[str, Any]:
    response = server.client.post(ENROLL, json=machine.body(server, code, **overrides))
    assert response.status_code == 409, response.text
    return response.json()


# ---------------------------------------------------------------- takeover


def test_a_serial_in_other_case_or_fullwidth_is_no_second_device(server: ServerHelper) -> None:
    device = enroll_new(server, Machine("PRESS-7"), "Acme")
    lookalike = ask_challenge(server, Machine("press-7"), server.code())
    assert lookalike["device_id"] == device.id  # the same machine's serial: proof, or nothing
    fullwidth = server.client.post(ENROLL, json=Machine("\uff30\uff32\uff25\uff33\uff33-7").body(server, server.code()))
    assert fullwidth.status_code == 422 and "plain characters" in fullwidth.text
    with server.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Device)) == 1


def test_another_customers_code_cannot_take_over_a_known_serial(server: ServerHelper) -> None:
    real = Machine("PRESS-7")
    device = enroll_new(server, real, "Acme")
    before = stored_device(server, device.id)
    acme = server.user_headers("carl", "customer", customer="Acme")
    globex = server.user_headers("gina", "customer", customer="Globex")

    intruder = Machine("PRESS-7")
    code = server.code("Globex")
    for proof in (None, {"challenge": "x.y", "signature": intruder.sign("x.y")}):
        response = server.client.post(ENROLL, json={**intruder.body(server, code), "proof": proof})
        assert response.status_code == 403, response.text
        assert response.json()["detail"] == f"this code is for customer Globex; device {device.id} belongs to Acme"

    after = stored_device(server, device.id)
    assert (after.token_hash, after.ssh_public_key, after.customer_id) == (
        before.token_hash,
        before.ssh_public_key,
        before.customer_id,
    )
    assert token_works(server, device.token)
    assert visible_ids(server, acme) == [device.id]
    assert visible_ids(server, globex) == []
    assert server.client.get(f"/api/v1/devices/{device.id}", headers=globex).status_code == 404
    events = refusals(server)
    assert len(events) == 2
    assert events[0].actor == "device:PRESS-7" and events[0].target == f"device:{device.id}"
    assert events[0].details["serial"] == "PRESS-7" and "customer Globex" in events[0].details["reason"]
    assert events[0].address == "testclient"
    # The refusal did not use up the code: it still enrolls a machine the server has not seen.
    assert not code_used(server, code)
    other = server.client.post(ENROLL, json=Machine("MIXER-1").body(server, code))
    assert other.status_code == 201
    assert visible_ids(server, globex) == [other.json()["device_id"]]


def test_a_code_alone_gets_a_challenge_and_changes_nothing(server: ServerHelper) -> None:
    real = Machine("PRESS-7")
    device = enroll_new(server, real, "Acme")
    before = stored_device(server, device.id)
    code = server.code()
    reply = ask_challenge(server, Machine("PRESS-7"), code)
    assert reply["device_id"] == device.id
    assert reply["challenge"] and reply["expires_at"]
    assert f"already enrolled as device {device.id}" in reply["detail"]
    after = stored_device(server, device.id)
    assert (after.token_hash, after.ssh_public_key) == (before.token_hash, before.ssh_public_key)
    assert token_works(server, device.token)
    assert not code_used(server, code)
    assert [e.details["reason"] for e in refusals(server)] == [reply["detail"]]


# ---------------------------------------------------------------- proof of the same machine


def test_reinstall_that_kept_its_key_proves_it_and_keeps_id_and_customer(server: ServerHelper) -> None:
    machine = Machine("PRESS-7")
    device = enroll_new(server, machine, "Acme")
    code = server.code()
    challenge = ask_challenge(server, machine, code)["challenge"]
    body = {**machine.body(server, code), "proof": {"challenge": challenge, "signature": machine.sign(challenge)}}
    response = server.client.post(ENROLL, json=body)
    assert response.status_code == 201, response.text
    assert response.json()["device_id"] == device.id
    new_token = response.json()["token"]
    assert not token_works(server, device.token)
    assert token_works(server, new_token)
    admin = server.user_headers("root", "admin")
    assert server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()["customer"] == "Acme"
    with server.sessionmaker() as session:
        enrolled = session.scalars(select(AuditEvent).where(AuditEvent.action == "device.enroll")).all()
        assert [e.details["method"] for e in enrolled] == ["new", "proof"]

    # The same signed request again gets no token: the code is used and the challenge is dead.
    replay = server.client.post(ENROLL, json=body)
    assert replay.status_code == 403
    with_new_code = server.client.post(ENROLL, json={**body, "code": server.code()})
    assert with_new_code.status_code == 403
    assert "challenge" in with_new_code.json()["detail"]
    assert token_works(server, new_token)


def test_the_current_key_may_register_a_new_key(server: ServerHelper) -> None:
    machine = Machine("PRESS-7")
    device = enroll_new(server, machine)
    rotated = Machine("PRESS-7")
    code = server.code()
    challenge = ask_challenge(server, rotated, code)["challenge"]
    proof = {"challenge": challenge, "signature": machine.sign(challenge, registering=rotated.public_key)}
    response = server.client.post(ENROLL, json={**rotated.body(server, code), "proof": proof})
    assert response.status_code == 201, response.text
    assert stored_device(server, device.id).ssh_public_key == rotated.public_key


def test_a_new_key_cannot_prove_it_is_the_enrolled_machine(server: ServerHelper) -> None:
    machine = Machine("PRESS-7")
    device = enroll_new(server, machine, "Acme")
    stranger = Machine("PRESS-7")
    code = server.code("Acme")  # even a code of the device's own customer
    challenge = ask_challenge(server, stranger, code)["challenge"]
    proof = {"challenge": challenge, "signature": stranger.sign(challenge)}
    response = server.client.post(ENROLL, json={**stranger.body(server, code), "proof": proof})
    assert response.status_code == 403
    assert response.json()["detail"] == (
        f"the proof does not verify with the key of device {device.id}: this machine is not the one enrolled as "
        "serial PRESS-7"
    )
    assert token_works(server, device.token)
    assert stored_device(server, device.id).ssh_public_key == machine.public_key
    assert not code_used(server, code)
    assert refusals(server)[-1].details["with_proof"] is True


def test_a_signature_binds_the_key_being_registered(server: ServerHelper) -> None:
    machine = Machine("PRESS-7")
    device = enroll_new(server, machine)
    attacker = Machine("PRESS-7")
    code = server.code()
    challenge = ask_challenge(server, machine, code)["challenge"]
    # A signature the real machine made for its own key does not register the attacker's.
    proof = {"challenge": challenge, "signature": machine.sign(challenge)}
    response = server.client.post(ENROLL, json={**attacker.body(server, code), "proof": proof})
    assert response.status_code == 403
    assert stored_device(server, device.id).ssh_public_key == machine.public_key


def test_a_challenge_expires_and_is_bound_to_its_device(server: ServerHelper) -> None:
    press, mixer = Machine("PRESS-7"), Machine("MIXER-1")
    enroll_new(server, press)
    enroll_new(server, mixer)
    code = server.code()
    press_challenge = ask_challenge(server, press, code)["challenge"]
    mixer_challenge = ask_challenge(server, mixer, code)["challenge"]
    wrong = {"challenge": mixer_challenge, "signature": press.sign(mixer_challenge)}
    response = server.client.post(ENROLL, json={**press.body(server, code), "proof": wrong})
    assert response.status_code == 403 and "challenge" in response.json()["detail"]
    payload, _, mac = press_challenge.partition(".")
    forged = f"{payload}.{mac[:-2]}AA"
    response = server.client.post(
        ENROLL, json={**press.body(server, code), "proof": {"challenge": forged, "signature": press.sign(forged)}}
    )
    assert response.status_code == 403 and "challenge" in response.json()["detail"]
    server.clock.advance(CHALLENGE_TTL_S + 1)
    late = {"challenge": press_challenge, "signature": press.sign(press_challenge)}
    response = server.client.post(ENROLL, json={**press.body(server, code), "proof": late})
    assert response.status_code == 403
    assert response.json()["detail"] == "the enrollment challenge expired; enroll again"


def test_malformed_proofs_are_422(server: ServerHelper) -> None:
    machine = Machine("PRESS-7")
    code = server.code()
    for proof in (
        {"challenge": "a b", "signature": base64.b64encode(bytes(64)).decode()},
        {"challenge": "a.b", "signature": "not base64!"},
        {"challenge": "a.b", "signature": base64.b64encode(bytes(10)).decode()},
        {"challenge": "a.b"},
    ):
        response = server.client.post(ENROLL, json={**machine.body(server, code), "proof": proof})
        assert response.status_code == 422, proof


# ---------------------------------------------------------------- a code issued for the device


def _device_code(server: ServerHelper, device_id: int) -> str:
    with server.sessionmaker() as session:
        code, _row = create_enrollment_code(session, now=server.clock(), for_device_id=device_id, created_by="test")
        session.commit()
    return code


def test_a_device_code_re_enrolls_a_machine_that_kept_nothing(server: ServerHelper) -> None:
    device = enroll_new(server, Machine("PRESS-7"), "Acme")
    new_disk = Machine("PRESS-7")
    response = server.client.post(
        ENROLL, json=new_disk.body(server, _device_code(server, device.id), customer="Globex")
    )
    assert response.status_code == 201, response.text
    assert response.json()["device_id"] == device.id
    assert not token_works(server, device.token)
    assert token_works(server, response.json()["token"])
    stored = stored_device(server, device.id)
    assert stored.ssh_public_key == new_disk.public_key
    assert stored.claimed_customer == "Globex"
    admin = server.user_headers("root", "admin")
    listed = server.client.get("/api/v1/devices", headers=admin).json()
    assert [(d["id"], d["customer"]) for d in listed["devices"]] == [(device.id, "Acme")]


def test_a_device_code_follows_a_replaced_mainboard_to_a_new_serial(server: ServerHelper) -> None:
    device = enroll_new(server, Machine("PRESS-7"), "Acme")
    response = server.client.post(ENROLL, json=Machine("PRESS-7B").body(server, _device_code(server, device.id)))
    assert response.status_code == 201, response.text
    assert response.json()["device_id"] == device.id
    assert stored_device(server, device.id).serial == "PRESS-7B"


def test_a_device_code_does_not_work_for_another_enrolled_serial(server: ServerHelper) -> None:
    press = enroll_new(server, Machine("PRESS-7"), "Acme")
    mixer = enroll_new(server, Machine("MIXER-1"), "Acme")
    code = _device_code(server, press.id)
    response = server.client.post(ENROLL, json=Machine("MIXER-1").body(server, code))
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"this code is for device {press.id} (serial PRESS-7); serial MIXER-1 is device {mixer.id}"
    )
    assert "challenge" not in response.json()
    assert token_works(server, press.token) and token_works(server, mixer.token)
    assert stored_device(server, press.id).serial == "PRESS-7"
    assert not code_used(server, code)


# ---------------------------------------------------------------- customers and assignment


def test_a_code_without_customer_leaves_the_device_unassigned_until_an_admin_assigns_it(
    server: ServerHelper,
) -> None:
    acme = server.user_headers("carl", "customer", customer="Acme")
    other = server.user_headers("olga", "customer", customer="Other")
    server.enroll("SEEN-1", customer="Acme")  # so the customer exists and its viewer sees something
    device = enroll_new(server, Machine("PRESS-7"), None, customer="Acme")
    stored = stored_device(server, device.id)
    assert stored.customer_id is None and stored.claimed_customer == "Acme"
    for viewer in (acme, other):
        assert device.id not in visible_ids(server, viewer)
        assert server.client.get(f"/api/v1/devices/{device.id}", headers=viewer).status_code == 404
        assert server.client.get(f"/api/v1/devices/{device.id}/reports", headers=viewer).status_code == 404
    support = server.user_headers("anna", "support")
    assert device.id in visible_ids(server, support)
    unassigned = server.client.get("/api/v1/devices", params={"unassigned": "true"}, headers=support).json()
    assert [d["id"] for d in unassigned["devices"]] == [device.id]

    admin = server.user_headers("root", "admin")
    assigned = server.client.put(f"/api/v1/devices/{device.id}/customer", json={"customer": "Acme"}, headers=admin)
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["customer"] == "Acme"
    assert device.id in visible_ids(server, acme)
    assert device.id not in visible_ids(server, other)
    unassign = server.client.put(f"/api/v1/devices/{device.id}/customer", json={"customer": None}, headers=admin)
    assert unassign.status_code == 200 and unassign.json()["customer"] is None
    assert device.id not in visible_ids(server, acme)
    with server.sessionmaker() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "device.assign")).all()
        assert [(e.actor, e.details["from"], e.details["to"]) for e in events] == [
            ("user:root", None, "Acme"),
            ("user:root", "Acme", None),
        ]


def test_a_code_of_a_customer_assigns_a_new_device_to_it_not_to_the_claimed_one(server: ServerHelper) -> None:
    device = enroll_new(server, Machine("PRESS-7"), "Acme", customer="Globex")
    admin = server.user_headers("root", "admin")
    assert server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()["customer"] == "Acme"
    assert stored_device(server, device.id).claimed_customer == "Globex"


def test_assigning_is_for_admins_and_names_are_checked(server: ServerHelper) -> None:
    device = server.enroll("PRESS-7")
    admin = server.user_headers("root", "admin")
    path = f"/api/v1/devices/{device.id}/customer"
    for headers in (server.user_headers("anna", "support"), server.user_headers("carl", "customer", "Acme")):
        assert server.client.put(path, json={"customer": "Acme"}, headers=headers).status_code == 403
    assert (
        server.client.put("/api/v1/devices/4242/customer", json={"customer": "Acme"}, headers=admin).status_code == 404
    )
    for body in ({"customer": "Ac\u202eme"}, {"customer": "Ac\u200bme"}, {"customer": ""}, {}, {"customer": 7}):
        assert server.client.put(path, json=body, headers=admin).status_code == 422, body
    assert server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()["customer"] is None


def test_enrollment_refuses_names_that_hide_what_they_are(server: ServerHelper) -> None:
    code = server.code()
    for overrides in ({"name": "press-7\u202e1-sserp"}, {"customer": "Ac\u2066me"}, {"model": "P\u200d7"}):
        response = server.client.post(ENROLL, json=Machine("PRESS-7").body(server, code, **overrides))
        assert response.status_code == 422, overrides
    assert not code_used(server, code)


# ---------------------------------------------------------------- the CLI


def test_cli_issues_device_codes_and_assigns_devices(
    server: ServerHelper, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--db", db_url, "--data-dir", str(tmp_path / "cli")]
    assert main(["device", "list", *args]) == 0  # no devices yet: the header alone
    assert capsys.readouterr().out.split() == ["ID", "NAME", "SERIAL", "CUSTOMER", "CLAIMED"]
    device = enroll_new(server, Machine("PRESS-7"), None, customer="Acme")
    assert main(["device", "list", "--unassigned", "--json", *args]) == 0
    listed = json.loads(capsys.readouterr().out)["devices"]
    assert [(d["id"], d["customer"], d["claimed_customer"]) for d in listed] == [(device.id, None, "Acme")]

    assert main(["device", "assign", str(device.id), "--customer", "Acme", *args]) == 0
    assert capsys.readouterr().out.strip() == f"device {device.id}: assigned to customer Acme (was unassigned)"
    assert main(["device", "list", "--unassigned", "--json", *args]) == 0
    assert json.loads(capsys.readouterr().out)["devices"] == []
    assert main(["device", "list", *args]) == 0
    assert "Acme" in capsys.readouterr().out

    assert main(["device", "assign", str(device.id), "--customer", "Ac\u202eme", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("telemaint-server: --customer") and "U+202E" in err and err.count("\n") == 1
    assert main(["device", "assign", "4242", "--unassign", *args]) == 1
    assert capsys.readouterr().err == "telemaint-server: there is no device 4242\n"
    assert main(["enrollment-code", "--customer", "Bad\u200bName", *args]) == 1
    assert "U+200B" in capsys.readouterr().err
    assert main(["enrollment-code", "--device", "4242", *args]) == 1
    assert capsys.readouterr().err == "telemaint-server: there is no device 4242\n"

    assert main(["enrollment-code", "--device", str(device.id), "--json", *args]) == 0
    issued = json.loads(capsys.readouterr().out)
    assert issued["device_id"] == device.id
    response = server.client.post(ENROLL, json=Machine("PRESS-7").body(server, issued["code"]))
    assert response.status_code == 201 and response.json()["device_id"] == device.id
    admin = server.user_headers("root", "admin")
    assert server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()["customer"] == "Acme"


# ---------------------------------------------------------------- the wire format, from both sides


def test_the_agent_signs_what_the_server_verifies(server: ServerHelper, tmp_path: Path) -> None:
    state = tmp_path / "agent-state"
    public_key = ensure_device_key(state)
    machine_serial = "PRESS-7"
    body = server.enroll_body(server.code("Acme"), machine_serial, ssh_public_key=public_key)
    device_id = server.client.post(ENROLL, json=body).json()["device_id"]
    assert agent_proof_message("c.h", " PRESS-7 ", public_key + " telemaint") == enrollment_proof_message(
        "c.h", "PRESS-7", public_key
    )

    code = server.code()
    body = server.enroll_body(code, machine_serial, ssh_public_key=public_key)
    challenge = server.client.post(ENROLL, json=body).json()["challenge"]
    signature = sign_with_device_key(state, agent_proof_message(challenge, machine_serial, public_key))
    proof = {"challenge": challenge, "signature": base64.b64encode(signature).decode()}
    response = server.client.post(ENROLL, json={**body, "proof": proof})
    assert response.status_code == 201, response.text
    assert response.json()["device_id"] == device_id
