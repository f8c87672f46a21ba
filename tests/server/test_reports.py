"""Report batches: acked by id, stored once, deriving device state and version history."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from server.api.models import MAX_REPORTS_PER_BATCH
from server.models import Device, Report
from tests.server.conftest import ServerHelper, health, inventory, report


def _stored_reports(server: ServerHelper) -> int:
    with server.sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(Report)) or 0


def test_batch_is_acked_by_id_and_updates_last_seen(server: ServerHelper) -> None:
    device = server.enroll()
    now = server.clock()
    batch = [
        report("heartbeat", {"agent_version": "0.2.0"}, now),
        report("health", health("WARNING"), now),
        report("events", {"events": [{"message": "door opened"}]}, now),
    ]
    server.clock.advance(5)
    response = server.post_reports(device, batch)
    assert response.status_code == 200, response.text
    assert response.json() == {"acked": [r["id"] for r in batch]}
    with server.sessionmaker() as session:
        row = session.get(Device, device.id)
        assert row is not None
        assert row.last_seen_at == server.clock()
        assert row.agent_version == "0.2.0"
        kinds = sorted(session.scalars(select(Report.kind)))
        assert kinds == ["events", "health", "heartbeat"]


def test_duplicates_are_acked_but_stored_once(server: ServerHelper) -> None:
    device = server.enroll()
    first = report("heartbeat", {"agent_version": "0.1.0"}, server.clock())
    second = report("heartbeat", {"agent_version": "0.1.0"}, server.clock())
    assert server.post_reports(device, [first]).json()["acked"] == [first["id"]]
    # resend after a lost ack, plus the same id twice in one batch
    response = server.post_reports(device, [first, second, second])
    assert response.status_code == 200
    assert response.json()["acked"] == [first["id"], second["id"]]
    assert _stored_reports(server) == 2


def test_unknown_kind_is_422_and_nothing_is_stored(server: ServerHelper) -> None:
    device = server.enroll()
    good = report("heartbeat", {}, server.clock())
    bad = report("shell", {"cmd": "rm -rf /"}, server.clock())
    response = server.post_reports(device, [good, bad])
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:4] == ["body", "reports", 1, "kind"]
    assert _stored_reports(server) == 0


def test_more_than_the_batch_limit_is_refused(server: ServerHelper) -> None:
    device = server.enroll()
    now = server.clock()
    batch = [report("heartbeat", {}, now) for _ in range(MAX_REPORTS_PER_BATCH + 1)]
    response = server.post_reports(device, batch)
    assert response.status_code in (413, 422)
    assert _stored_reports(server) == 0
    full = batch[:MAX_REPORTS_PER_BATCH]
    assert len(server.post_reports(device, full).json()["acked"]) == MAX_REPORTS_PER_BATCH


def test_version_history_after_two_inventories(server: ServerHelper) -> None:
    device = server.enroll(customer="Acme")
    admin = server.user_headers("anna", "support")
    t0 = server.clock()
    server.post_reports(device, [report("inventory", inventory({"camera firmware": "2.3.1", "plc": "4.0"}), t0)])
    t1 = server.clock.advance(3600)
    second = inventory({"camera firmware": "2.4.0", "plc": "4.0"}, kernel="6.1.0-20-amd64")
    assert server.post_reports(device, [report("inventory", second, t1)]).status_code == 200

    detail = server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()
    history = {(c["key"], c["old"], c["new"]) for c in detail["version_history"]}
    assert history == {
        ("component:camera firmware", "2.3.1", "2.4.0"),
        ("kernel", "6.1.0-18-amd64", "6.1.0-20-amd64"),
    }
    change = next(c for c in detail["version_history"] if c["key"] == "component:camera firmware")
    assert change["changed_at"].startswith(t1.strftime("%Y-%m-%dT%H:%M:%S"))
    assert detail["versions"]["component:camera firmware"] == "2.4.0"
    assert detail["versions"]["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert detail["versions"]["bios"] == "1.7.2"
    assert detail["versions"]["agent"] == "0.1.0"
    assert detail["versions"]["packages"].startswith("1203 packages")
    assert detail["inventory"]["collectors"]["versions"]["data"]["kernel"]["release"] == "6.1.0-20-amd64"


def test_skipped_collector_or_unreadable_component_is_not_a_change(server: ServerHelper) -> None:
    device = server.enroll()
    admin = server.user_headers("anna", "support")
    first = inventory({"camera firmware": "2.3.1", "plc": "4.0"})
    server.post_reports(device, [report("inventory", first, server.clock())])
    # versions collector skipped: nothing known about versions, nothing changed
    skipped = inventory(versions_status="skipped")
    server.post_reports(device, [report("inventory", skipped, server.clock.advance(60))])
    # the camera did not answer this time; the PLC was removed from the machine
    partial = inventory({"camera firmware": None})
    server.post_reports(device, [report("inventory", partial, server.clock.advance(60))])
    # an inventory missing whole parts is still taken
    bare = {"agent_version": "0.1.0", "collectors": {"versions": {"status": "ok", "data": {"components": None}}}}
    assert server.post_reports(device, [report("inventory", bare, server.clock.advance(60))]).status_code == 200

    detail = server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()
    assert [(c["key"], c["old"], c["new"]) for c in detail["version_history"]] == [("component:plc", "4.0", None)]
    assert detail["versions"]["component:camera firmware"] == "2.3.1"
    assert detail["versions"]["kernel"] == "6.1.0-18-amd64"


def test_late_older_inventory_does_not_replace_the_newer_one(server: ServerHelper) -> None:
    device = server.enroll()
    admin = server.user_headers("anna", "support")
    t0 = server.clock()
    t1 = server.clock.advance(600)
    server.post_reports(device, [report("inventory", inventory({"camera firmware": "2.4.0"}), t1)])
    server.post_reports(device, [report("inventory", inventory({"camera firmware": "2.3.1"}), t0)])
    detail = server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()
    assert detail["versions"]["component:camera firmware"] == "2.4.0"
    assert detail["version_history"] == []
    reports = server.client.get(f"/api/v1/devices/{device.id}/reports?kind=inventory", headers=admin).json()
    assert len(reports["reports"]) == 2  # both are kept


def test_latest_health_sets_worst_status(server: ServerHelper) -> None:
    device = server.enroll()
    admin = server.user_headers("anna", "support")
    server.post_reports(device, [report("health", health("CRITICAL"), server.clock())])
    server.post_reports(device, [report("health", health("OK"), server.clock.advance(60))])
    no_status = {"checks": [{"name": "a", "status": "OK"}, {"name": "b", "status": "WARNING"}]}
    server.post_reports(device, [report("health", no_status, server.clock.advance(60))])
    listed = server.client.get("/api/v1/devices", headers=admin).json()["devices"]
    assert [d["health_status"] for d in listed] == ["WARNING"]
    detail = server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()
    assert detail["health"] == no_status
    only_warning = server.client.get("/api/v1/devices?health=WARNING", headers=admin).json()
    assert only_warning["total"] == 1
    assert server.client.get("/api/v1/devices?health=CRITICAL", headers=admin).json()["total"] == 0


def test_report_list_is_newest_first_and_filtered_by_kind(server: ServerHelper) -> None:
    device = server.enroll()
    admin = server.user_headers("anna", "support")
    ids = []
    for _ in range(3):
        r = report("heartbeat", {"n": len(ids)}, server.clock.advance(60))
        ids.append(r["id"])
        server.post_reports(device, [r])
    server.post_reports(device, [report("health", health(), server.clock.advance(60))])
    response = server.client.get(f"/api/v1/devices/{device.id}/reports?kind=heartbeat&limit=2", headers=admin)
    assert [r["id"] for r in response.json()["reports"]] == [ids[2], ids[1]]
    assert response.json()["reports"][0]["payload"] == {"n": 2}


def test_heartbeat_interval_from_the_agent_is_used(server: ServerHelper) -> None:
    device = server.enroll()
    server.post_reports(device, [report("heartbeat", {"heartbeat_interval_s": 300}, server.clock())])
    with server.sessionmaker() as session:
        row = session.get(Device, device.id)
        assert row is not None and row.report_interval_s == 300


def test_report_id_must_be_a_uuid(server: ServerHelper) -> None:
    device = server.enroll()
    bad = report("heartbeat", {}, server.clock(), report_id="not-a-uuid")
    assert server.post_reports(device, [bad]).status_code == 422
    ok = report("heartbeat", {}, server.clock(), report_id=str(uuid.uuid4()).upper())
    assert server.post_reports(device, [ok]).status_code == 200


def test_concurrent_deliveries_of_one_batch_store_it_once(server: ServerHelper) -> None:
    from concurrent.futures import ThreadPoolExecutor

    device = server.enroll()
    batch = [report("heartbeat", {"n": n}, server.clock()) for n in range(50)]
    batch.append(report("health", health("CRITICAL"), server.clock()))
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: server.post_reports(device, batch), range(8)))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses if r.status_code != 200]
    assert all(len(r.json()["acked"]) == len(batch) for r in responses)
    assert _stored_reports(server) == len(batch)
