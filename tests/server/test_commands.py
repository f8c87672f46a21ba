"""Commands: support queues an allowlisted kind, the agent polls it and posts the result."""

from __future__ import annotations

from sqlalchemy import select

from server.models import AuditEvent
from tests.server.conftest import ServerHelper


def test_command_round_trip(server: ServerHelper) -> None:
    device = server.enroll()
    support = server.user_headers("anna", "support")
    queued = server.client.post(f"/api/v1/devices/{device.id}/commands", json={"kind": "run_checks"}, headers=support)
    assert queued.status_code == 201, queued.text
    command = queued.json()
    assert command["status"] == "queued" and command["created_by"] == "anna"

    polled = server.client.get("/api/v1/agent/commands", headers=device.headers)
    assert polled.status_code == 200
    assert polled.json() == {
        "commands": [{"id": command["id"], "kind": "run_checks", "created_at": command["created_at"], "args": {}}]
    }
    # sent commands are not handed out twice
    assert server.client.get("/api/v1/agent/commands", headers=device.headers).json() == {"commands": []}
    listed = server.client.get(f"/api/v1/devices/{device.id}/commands", headers=support).json()["commands"]
    assert [c["status"] for c in listed] == ["sent"]
    # ... unless the agent never answered: then it gets it again after ten minutes
    server.clock.advance(599)
    assert server.client.get("/api/v1/agent/commands", headers=device.headers).json() == {"commands": []}
    server.clock.advance(2)
    resent = server.client.get("/api/v1/agent/commands", headers=device.headers).json()["commands"]
    assert [c["id"] for c in resent] == [command["id"]]
    assert server.client.get("/api/v1/agent/commands", headers=device.headers).json() == {"commands": []}

    server.clock.advance(3)
    result = {"status": "done", "message": "3 checks, worst OK", "result": {"status": "OK", "exit_code": 0}}
    posted = server.client.post(f"/api/v1/agent/commands/{command['id']}/result", json=result, headers=device.headers)
    assert posted.status_code == 200, posted.text
    assert posted.json()["status"] == "done"

    final = server.client.get(f"/api/v1/devices/{device.id}/commands", headers=support).json()["commands"][0]
    assert final["status"] == "done"
    assert final["message"] == "3 checks, worst OK"
    assert final["result"] == {"status": "OK", "exit_code": 0}
    assert final["finished_at"] is not None

    # a repeated result (lost answer, agent retries) changes nothing
    again = {"status": "failed", "message": "late duplicate"}
    repeated = server.client.post(f"/api/v1/agent/commands/{command['id']}/result", json=again, headers=device.headers)
    assert repeated.status_code == 200
    assert repeated.json()["status"] == "done"

    with server.sessionmaker() as session:
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "command.queue")).all()
        assert [(a.actor, a.target) for a in audit] == [("user:anna", f"device:{device.id}")]


def test_only_allowlisted_kinds_can_be_queued(server: ServerHelper) -> None:
    device = server.enroll()
    support = server.user_headers("anna", "support")
    for body in ({"kind": "shell"}, {"kind": "run_checks; reboot"}, {}, {"kind": "collect_inventory", "x": 1}):
        response = server.client.post(f"/api/v1/devices/{device.id}/commands", json=body, headers=support)
        assert response.status_code == 422, body
    ok = server.client.post(
        f"/api/v1/devices/{device.id}/commands", json={"kind": "collect_inventory"}, headers=support
    )
    assert ok.status_code == 201


def test_command_result_is_validated(server: ServerHelper) -> None:
    device = server.enroll()
    support = server.user_headers("anna", "support")
    command = server.client.post(f"/api/v1/devices/{device.id}/commands", json={"kind": "run_checks"}, headers=support)
    url = f"/api/v1/agent/commands/{command.json()['id']}/result"
    for body in ({"status": "queued"}, {"status": "done", "result": [1, 2]}, {"status": "done", "message": "a\x00b"}):
        assert server.client.post(url, json=body, headers=device.headers).status_code == 422, body
