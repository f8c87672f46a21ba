import multiprocessing
import os
import stat

import pytest

from agent.daemon import Backoff, flush_outbox
from agent.outbox import Outbox, new_report
from agent.uplink import UplinkError


def test_reports_survive_reopen_and_leave_in_order(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite"
    with Outbox(path) as outbox:
        ids = [outbox_put(outbox, "heartbeat", n) for n in range(5)]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with Outbox(path) as outbox:
        assert [r.id for r in outbox.peek()] == ids
        assert [r.payload["n"] for r in outbox.peek(limit=2)] == [0, 1]
        assert outbox.ack(ids[:2]) == 2
        assert [r.id for r in outbox.peek()] == ids[2:]
        assert outbox.depth() == {"heartbeat": 3, "total": 3}


def outbox_put(outbox: Outbox, kind: str, n: int, size: int = 0) -> str:
    report = new_report(kind, {"n": n, "pad": "x" * size})
    outbox.put(report)
    return report.id


def test_same_uuid_is_stored_once(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as outbox:
        report = new_report("events", {"events": []})
        outbox.put(report)
        outbox.put(report)
        assert outbox.depth()["total"] == 1


def test_peek_respects_byte_budget_but_returns_at_least_one(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as outbox:
        for n in range(3):
            outbox_put(outbox, "inventory", n, size=1000)
        assert len(outbox.peek(max_bytes=2500)) == 2
        assert len(outbox.peek(max_bytes=10)) == 1


def test_when_full_oldest_heartbeats_go_first_never_events(tmp_path):
    with Outbox(tmp_path / "o.sqlite", max_reports=6) as outbox:
        events = [outbox_put(outbox, "events", n) for n in range(3)]
        beats = [outbox_put(outbox, "heartbeat", n) for n in range(3)]
        outbox_put(outbox, "heartbeat", 3)
        remaining = [r.id for r in outbox.peek()]
        assert beats[0] not in remaining
        assert set(events) <= set(remaining)
        for n in range(4, 10):
            outbox_put(outbox, "events", n)
        depth = outbox.depth()
        assert depth["events"] == 9  # over the limit, but events are kept
        assert depth.get("heartbeat", 0) == 0


def test_superseded_inventory_is_dropped_before_the_newest(tmp_path):
    with Outbox(tmp_path / "o.sqlite", max_reports=2) as outbox:
        first = outbox_put(outbox, "inventory", 1)
        second = outbox_put(outbox, "inventory", 2)
        third = outbox_put(outbox, "health", 3)
        remaining = [r.id for r in outbox.peek()]
        assert remaining == [second, third]
        assert first not in remaining


def _writer(path, count):
    with Outbox(path) as outbox:
        for n in range(count):
            outbox.put(new_report("heartbeat", {"n": n, "pid": os.getpid()}))


def test_two_processes_can_write_at_once(tmp_path):
    path = tmp_path / "o.sqlite"
    Outbox(path).close()
    procs = [multiprocessing.get_context("spawn").Process(target=_writer, args=(path, 50)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    with Outbox(path) as outbox:
        assert outbox.depth()["total"] == 100


class FakeUplink:
    """Stands in for the server in these unit tests of the delivery logic."""

    def __init__(self, fail_after: int | None = None, ack_all: bool = True):
        self.batches: list[list[str]] = []
        self.fail_after = fail_after
        self.ack_all = ack_all

    def send_reports(self, reports):
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise UplinkError("cannot reach https://t.example.com: Connection refused")
        self.batches.append([r["id"] for r in reports])
        return [r["id"] for r in reports] if self.ack_all else []


def test_flush_sends_in_order_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.daemon.MAX_BATCH_REPORTS", 4)
    with Outbox(tmp_path / "o.sqlite") as outbox:
        ids = [outbox_put(outbox, "heartbeat", n) for n in range(10)]
        uplink = FakeUplink()
        result = flush_outbox(outbox, uplink)
        assert result.sent == 10 and result.remaining == 0 and result.error is None
        assert [i for batch in uplink.batches for i in batch] == ids
        assert [len(b) for b in uplink.batches] == [4, 4, 2]


def test_flush_keeps_what_was_not_acked(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.daemon.MAX_BATCH_REPORTS", 4)
    with Outbox(tmp_path / "o.sqlite") as outbox:
        ids = [outbox_put(outbox, "heartbeat", n) for n in range(10)]
        result = flush_outbox(outbox, FakeUplink(fail_after=1))
        assert result.sent == 4 and result.remaining == 6
        assert "Connection refused" in result.error
        assert [r.id for r in outbox.peek()] == ids[4:]
        stuck = flush_outbox(outbox, FakeUplink(ack_all=False))
        assert stuck.error == "the server acknowledged none of the reports sent"
        assert stuck.remaining == 6


def test_backoff_grows_with_jitter_caps_at_five_minutes_and_resets():
    backoff = Backoff()
    delays = [backoff.next_delay() for _ in range(12)]
    assert 2.5 <= delays[0] <= 5
    assert 5 <= delays[1] <= 10
    assert all(d <= 300 for d in delays)
    assert delays[-1] >= 150
    assert len({round(d, 6) for d in delays[-4:]}) > 1  # jittered, not lockstep
    backoff.reset()
    assert backoff.next_delay() <= 5


@pytest.mark.parametrize("kind", ["bogus", ""])
def test_unknown_kind_is_refused(kind):
    with pytest.raises(ValueError):
        new_report(kind, {})


def test_connection_failures_read_as_one_short_reason():
    from agent.uplink import _reason

    refused = Exception(
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /api/v1/agent/reports "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f>: "
        "Failed to establish a new connection: [Errno 111] Connection refused'))"
    )
    assert _reason(refused) == "Connection refused"
    tls = Exception(
        "HTTPSConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /x (Caused by "
        "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate (_ssl.c:1006)')))"
    )
    assert _reason(tls) == "certificate verify failed: self-signed certificate"
