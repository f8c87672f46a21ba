"""A device's daily storage budget: what is over it is refused (413/429) and counted, support
sees it, and the agent neither loses nor jams on what the server refuses."""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import LargeBinary, Text, func, select

from agent.daemon import HeldReports, flush_outbox
from agent.outbox import Outbox, new_report
from agent.uplink import Uplink
from server.config import ServerSettings, load_settings
from server.models import AuditEvent, Report
from tests.processes import ServerProcess
from tests.server.conftest import ServerHelper, report, ssh_public_key
from tests.server.test_dashboard import log_in

BUDGET_BYTES = 20_000
EMPTY_BLOB_BYTES = len('{"blob":""}')
SECONDS_FROM_START_TO_MIDNIGHT = 15 * 3600  # the fake clock starts at 09:00 UTC


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> ServerSettings:
    return load_settings(
        {
            "db_url": db_url,
            "data_dir": tmp_path / "data",
            "secret_key": secrets.token_urlsafe(32),
            "device_daily_bytes": BUDGET_BYTES,
        },
        environ={},
    )


def blob(size_bytes: int) -> dict[str, Any]:
    """Return an events payload of exactly ``size_bytes`` as compact JSON."""
    return {"blob": "x" * (size_bytes - EMPTY_BLOB_BYTES)}


def stored_bytes(server: ServerHelper) -> int:
    with server.sessionmaker() as session:
        return session.scalar(select(func.coalesce(func.sum(Report.size), 0))) or 0


def budget_events(server: ServerHelper) -> list[AuditEvent]:
    with server.sessionmaker() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "device.budget_exceeded")))


def test_over_budget_is_429_until_the_next_utc_day_and_counted_once_in_the_audit_log(server: ServerHelper) -> None:
    device = server.enroll()
    admin = server.user_headers("root", "admin")
    first = [report("events", blob(6_000), server.clock()), report("events", blob(6_000), server.clock())]
    assert server.post_reports(device, first).status_code == 200
    late = [report("events", blob(9_000), server.clock())]
    refused = server.post_reports(device, late)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == str(SECONDS_FROM_START_TO_MIDNIGHT)
    assert "budget" in refused.json()["detail"]
    assert server.post_reports(device, late).status_code == 429
    assert stored_bytes(server) == 12_000
    # a resend of what was stored is acked, budget or not (the agent lost the first ack)
    assert server.post_reports(device, first).json()["acked"] == [r["id"] for r in first]

    usage = server.client.get(f"/api/v1/devices/{device.id}/usage", headers=admin).json()
    assert usage["daily_budget_bytes"] == BUDGET_BYTES
    assert usage["days"] == [
        {
            "day": "2026-03-02",
            "bytes": 12_000,
            "reports": 2,
            "refused_bytes": 18_000,
            "refused_reports": 2,
            "first_refused_at": usage["days"][0]["first_refused_at"],
        }
    ]
    assert usage["days"][0]["first_refused_at"].startswith("2026-03-02T09:00:00")
    events = budget_events(server)
    assert [(e.target, e.details["day"], e.details["refused_bytes"]) for e in events] == [
        (f"device:{device.id}", "2026-03-02", 9_000)
    ]

    server.clock.advance(SECONDS_FROM_START_TO_MIDNIGHT)
    assert server.post_reports(device, late).status_code == 200
    assert stored_bytes(server) == 21_000
    assert server.post_reports(device, [report("events", blob(12_000), server.clock())]).status_code == 429
    assert len(budget_events(server)) == 2  # once per device per day


def test_a_batch_larger_than_the_whole_budget_is_413_and_its_parts_fit(server: ServerHelper) -> None:
    device = server.enroll()
    parts = [report("events", blob(8_000), server.clock()) for _ in range(3)]
    response = server.post_reports(device, parts)
    assert response.status_code == 413
    assert "larger than the device's daily storage budget" in response.json()["detail"]
    assert stored_bytes(server) == 0
    assert server.post_reports(device, parts[:2]).status_code == 200
    assert server.post_reports(device, parts[2:]).status_code == 429


def test_a_report_is_charged_the_bytes_it_takes_in_the_database(server: ServerHelper) -> None:
    """Escaped characters (4-byte emoji as ``\\ud83d\\ude00``) or spaced separators would store
    more than the budget counts."""
    device = server.enroll()
    payloads = [{"blob": "\U0001f600" * 1_000}, {"list": [0] * 1_000}, {"text": "Grüße, 東京"}]
    sent = server.post_reports(device, [report("events", p, server.clock()) for p in payloads])
    assert sent.status_code == 200
    with server.sessionmaker() as session:
        if session.bind.dialect.name == "sqlite":
            on_disk = func.length(func.cast(Report.payload, LargeBinary))
        else:
            on_disk = func.octet_length(func.cast(Report.payload, Text))
        rows = session.execute(select(Report.size, on_disk)).all()
    assert len(rows) == 3 and all(size == actual for size, actual in rows), rows
    assert stored_bytes(server) == sum(actual for _size, actual in rows)


def test_one_devices_budget_is_its_own(server: ServerHelper) -> None:
    greedy, quiet = server.enroll("G-1"), server.enroll("Q-1")
    assert server.post_reports(greedy, [report("events", blob(BUDGET_BYTES), server.clock())]).status_code == 200
    assert server.post_reports(greedy, [report("heartbeat", {}, server.clock())]).status_code == 429
    assert server.post_reports(quiet, [report("events", blob(BUDGET_BYTES), server.clock())]).status_code == 200


def test_concurrent_batches_cannot_slip_past_the_budget_together(server: ServerHelper) -> None:
    device = server.enroll()
    batches = [[report("events", blob(6_000), server.clock())] for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda batch: server.post_reports(device, batch), batches))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [429] * 5, [r.text for r in responses]
    assert stored_bytes(server) == 18_000
    admin = server.user_headers("root", "admin")
    day = server.client.get(f"/api/v1/devices/{device.id}/usage", headers=admin).json()["days"][0]
    assert (day["bytes"], day["refused_reports"]) == (18_000, 5)
    assert len(budget_events(server)) == 1


def test_the_device_page_shows_todays_storage_and_refusals(server: ServerHelper) -> None:
    device = server.enroll()
    server.post_reports(device, [report("events", blob(10_240), server.clock())])
    server.user("sam", "support")
    log_in(server.client, "sam")
    page = server.client.get(f"/devices/{device.id}").text
    assert "10.0 KiB of 19.5 KiB a day" in page
    assert "Over budget" not in page
    server.post_reports(device, [report("events", blob(15_000), server.clock())])
    page = server.client.get(f"/devices/{device.id}").text
    assert "Over budget: 1 reports (14.6 KiB) refused since 2026-03-02 09:00:00 UTC" in page


def test_the_agent_holds_back_what_the_server_never_takes_and_stops_when_over_budget(
    db_url: str, tmp_path: Path
) -> None:
    with ServerProcess(tmp_path / "server", db_url=db_url, env={"TELEMAINT_SERVER_DEVICE_DAILY_BYTES": "20000"}) as srv:
        code = json.loads(srv.cli("enrollment-code", "--json"))["code"]
        identity = Uplink(srv.url).enroll(code, {"name": "press 7", "serial": "SN-7"}, ssh_public_key())
        uplink = Uplink(srv.url, token=identity["token"])
        with Outbox(tmp_path / "outbox.sqlite") as outbox:
            early = new_report("events", blob(2_000))
            too_large = new_report("inventory", blob(BUDGET_BYTES + 1))  # can never be stored
            not_json = new_report("health", {"value": float("nan")})
            late = new_report("events", blob(2_000))
            for item in (early, too_large, not_json, late):
                outbox.put(item)
            held = HeldReports()  # as the daemon keeps it from one delivery to the next
            result = flush_outbox(outbox, uplink, held=held)
            assert (result.error, result.sent, result.held) == (None, 2, 2)
            assert sorted(r.id for r in outbox.peek()) == sorted([too_large.id, not_json.id])  # kept, not deleted

            for _ in range(5):
                outbox.put(new_report("events", blob(6_000)))
            over = flush_outbox(outbox, uplink, held=held)
            assert over.http_status == 429
            assert over.sent == 2  # 4 + 12 of 20 kB; the third batch does not fit today
            assert outbox.depth()["total"] == 2 + 3
            uplink.close()
