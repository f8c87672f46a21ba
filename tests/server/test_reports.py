"""Report batches: acked by id, stored once per device, dated by what the server can trust,
deriving device state and version history; reading them back a bounded piece at a time."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from server.api.models import MAX_REPORTS_PER_BATCH
from server.config import MiB
from server.models import Device, DeviceState, Report
from server.web.device_page import health_history
from server.web.queries import health_samples
from tests.server.conftest import ServerHelper, health, inventory, report
from tests.server.test_dashboard import log_in


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


def test_report_list_is_newest_first_without_payloads_and_one_report_has_its_payload(server: ServerHelper) -> None:
    device = server.enroll()
    admin = server.user_headers("anna", "support")
    ids = []
    for _ in range(3):
        r = report("heartbeat", {"n": len(ids)}, server.clock.advance(60))
        ids.append(r["id"])
        server.post_reports(device, [r])
    server.post_reports(device, [report("health", health(), server.clock.advance(60))])
    url = f"/api/v1/devices/{device.id}/reports"
    page = server.client.get(f"{url}?kind=heartbeat&limit=2", headers=admin).json()
    assert [r["id"] for r in page["reports"]] == [ids[2], ids[1]]
    assert "payload" not in page["reports"][0]
    assert page["reports"][0]["size"] == len('{"n":2}')
    rest = server.client.get(f"{url}?kind=heartbeat&limit=2&offset={page['next_offset']}", headers=admin).json()
    assert [r["id"] for r in rest["reports"]] == [ids[0]] and rest["next_offset"] is None
    one = server.client.get(f"{url}/{ids[2]}", headers=admin)
    assert one.status_code == 200
    assert one.json()["payload"] == {"n": 2} and one.json()["kind"] == "heartbeat"
    assert server.client.get(f"{url}/{uuid.uuid4()}", headers=admin).status_code == 404
    assert server.client.get(f"{url}/not-a-uuid", headers=admin).status_code == 422


def test_reading_large_reports_is_bounded_per_response(server: ServerHelper) -> None:
    device = server.enroll()
    admin = server.user_headers("anna", "support")
    big = [report("events", {"blob": "x" * (7 * MiB)}, server.clock.advance(1)) for _ in range(3)]
    for r in big:
        assert server.post_reports(device, [r]).status_code == 200
    listed = server.client.get(f"/api/v1/devices/{device.id}/reports?limit=500", headers=admin)
    assert listed.status_code == 200
    assert len(listed.json()["reports"]) == 3
    assert len(listed.content) < 4096  # three 7 MiB reports listed in a few hundred bytes
    assert {r["size"] for r in listed.json()["reports"]} == {len(json.dumps(big[0]["payload"], separators=(",", ":")))}
    one = server.client.get(f"/api/v1/devices/{device.id}/reports/{big[0]['id']}", headers=admin)
    assert one.status_code == 200 and len(one.json()["payload"]["blob"]) == 7 * MiB


def test_the_health_history_loads_payloads_within_its_byte_bound(server: ServerHelper) -> None:
    device = server.enroll()
    small = report("health", health("OK"), server.clock.advance(60))
    large = report("health", {**health("CRITICAL"), "padding": "x" * 200_000}, server.clock.advance(60))
    newest = report("health", health("WARNING"), server.clock.advance(60))
    for r in (small, large, newest):
        server.post_reports(device, [r])
    with server.sessionmaker() as session:
        samples = health_samples(session, device.id, limit=10, max_bytes=100_000)
    assert [s.payload["status"] if s.payload else None for s in samples] == ["WARNING", None, "OK"]
    history = health_history(samples)
    assert history["overall"] == ["WARNING", None, "OK"] and history["unloaded"] == 1


def test_report_ids_are_unique_per_device_not_across_devices(server: ServerHelper) -> None:
    device_a, device_b = server.enroll("A-1"), server.enroll("B-2")
    admin = server.user_headers("root", "admin")
    a_reports = [report("health", health("CRITICAL"), server.clock()), report("heartbeat", {"n": "a"}, server.clock())]
    # B learned A's report ids and sends them first, with its own payloads
    b_reports = [{**r, "payload": {"n": "b"}, "kind": "events"} for r in a_reports]
    assert server.post_reports(device_b, b_reports).json()["acked"] == [r["id"] for r in b_reports]
    response = server.post_reports(device_a, a_reports)
    assert response.status_code == 200
    assert response.json()["acked"] == [r["id"] for r in a_reports]
    with server.sessionmaker() as session:
        stored = {(row.device_id, str(row.uuid), row.kind) for row in session.scalars(select(Report))}
    assert stored == {
        (d.id, r["id"], r["kind"]) for d, rs in ((device_a, a_reports), (device_b, b_reports)) for r in rs
    }
    a_state = server.client.get(f"/api/v1/devices/{device_a.id}", headers=admin).json()
    assert a_state["health_status"] == "CRITICAL"
    one = server.client.get(f"/api/v1/devices/{device_b.id}/reports/{a_reports[0]['id']}", headers=admin).json()
    assert one["payload"] == {"n": "b"}
    # a resend by A is still a duplicate of A's own report, and B's resend of B's
    assert server.post_reports(device_a, a_reports).json()["acked"] == [r["id"] for r in a_reports]
    assert _stored_reports(server) == 4


def test_a_report_dated_in_the_future_cannot_freeze_the_device_state(server: ServerHelper) -> None:
    device = server.enroll()
    admin = server.user_headers("anna", "support")
    received = server.clock()
    future = received + timedelta(days=365)
    frozen = [
        report("health", {**health("CRITICAL"), "generated_at": future.isoformat()}, future),
        report("inventory", inventory({"camera firmware": "6.6.6"}), future),
    ]
    assert server.post_reports(device, frozen).status_code == 200
    detail = server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()
    assert detail["health_at"].startswith(received.strftime("%Y-%m-%dT%H:%M:%S"))  # dated as received
    server.user("sam", "support")
    log_in(server.client, "sam")
    page = server.client.get(f"/devices/{device.id}").text
    assert "checked 2026-03-02 09:00:00 UTC" in page and "2027-" not in page
    later = server.clock.advance(60)
    genuine = [
        report("health", health("OK"), later),
        report("inventory", inventory({"camera firmware": "2.4.0"}), later),
    ]
    assert server.post_reports(device, genuine).status_code == 200
    detail = server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()
    assert detail["health_status"] == "OK"
    assert detail["versions"]["component:camera firmware"] == "2.4.0"
    listed = server.client.get(f"/api/v1/devices/{device.id}/reports?kind=health", headers=admin).json()["reports"]
    assert [r["id"] for r in listed] == [genuine[0]["id"], frozen[0]["id"]]
    assert all(r["created_at"] <= r["received_at"] for r in listed)


def test_a_future_state_stored_before_times_were_bounded_is_superseded(server: ServerHelper) -> None:
    device = server.enroll()
    admin = server.user_headers("anna", "support")
    server.post_reports(device, [report("health", health("CRITICAL"), server.clock())])
    with server.sessionmaker() as session:
        state = session.get(DeviceState, device.id)
        assert state is not None
        state.health_at = server.clock() + timedelta(days=3650)
        session.commit()
    server.post_reports(device, [report("health", health("OK"), server.clock.advance(60))])
    assert server.client.get(f"/api/v1/devices/{device.id}", headers=admin).json()["health_status"] == "OK"


@pytest.mark.parametrize(
    "created_at",
    [
        "9999-12-31T23:30:00-05:00",  # past year 9999 in UTC
        "0001-01-01T00:30:00+05:00",  # before year 1 in UTC
        "+275760-09-13T00:00:00Z",  # the largest JavaScript date
        "1969-12-31T23:59:59Z",
        "2026-13-01T00:00:00Z",
    ],
)
def test_unrepresentable_report_times_are_422(server: ServerHelper, created_at: str) -> None:
    device = server.enroll()
    item = {**report("heartbeat", {}, server.clock()), "created_at": created_at}
    response = server.post_reports(device, [item])
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "reports", 0, "created_at"]
    assert _stored_reports(server) == 0


def test_the_latest_representable_time_is_stored_as_received(server: ServerHelper) -> None:
    device = server.enroll()
    item = report("heartbeat", {}, server.clock())
    item["created_at"] = "9999-12-31T23:59:59.999999Z"
    assert server.post_reports(device, [item]).status_code == 200
    with server.sessionmaker() as session:
        row = session.scalars(select(Report)).one()
        assert row.created_at == row.received_at == server.clock()


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
