"""Device list and status: online/late/offline from last-seen against the device's interval."""

from __future__ import annotations

from tests.server.conftest import ServerHelper, report


def _status(server: ServerHelper, headers: dict[str, str], device_id: int) -> str:
    response = server.client.get(f"/api/v1/devices/{device_id}", headers=headers)
    assert response.status_code == 200
    return response.json()["status"]


def test_status_follows_last_seen_against_the_interval(server: ServerHelper) -> None:
    support = server.user_headers("anna", "support")
    device = server.enroll()
    assert _status(server, support, device.id) == "offline"  # enrolled, never reported

    server.post_reports(device, [report("heartbeat", {}, server.clock())])
    assert _status(server, support, device.id) == "online"
    server.clock.advance(2 * 60)  # interval 60 s: online within 2 intervals
    assert _status(server, support, device.id) == "online"
    server.clock.advance(1)
    assert _status(server, support, device.id) == "late"
    server.clock.advance(10 * 60 - 121)
    assert _status(server, support, device.id) == "late"
    server.clock.advance(1)
    assert _status(server, support, device.id) == "offline"

    server.post_reports(device, [report("heartbeat", {}, server.clock())])
    assert _status(server, support, device.id) == "online"


def test_list_filters_by_status_customer_and_search(server: ServerHelper) -> None:
    support = server.user_headers("anna", "support")
    press = server.enroll(serial="PRESS-1", customer="Acme")
    mixer = server.enroll(serial="MIXER-2", customer="Globex")
    server.enroll(serial="LATHE-3", customer="Acme")
    server.post_reports(press, [report("heartbeat", {}, server.clock())])
    server.clock.advance(300)
    server.post_reports(mixer, [report("heartbeat", {}, server.clock())])

    def serials(query: str) -> list[str]:
        response = server.client.get(f"/api/v1/devices{query}", headers=support)
        assert response.status_code == 200, response.text
        return [d["serial"] for d in response.json()["devices"]]

    assert serials("") == ["LATHE-3", "MIXER-2", "PRESS-1"]  # by name: "press LATHE-3", ...
    assert serials("?status=online") == ["MIXER-2"]
    assert serials("?status=late") == ["PRESS-1"]
    assert serials("?status=offline") == ["LATHE-3"]
    assert serials("?customer=Acme") == ["LATHE-3", "PRESS-1"]
    assert serials("?q=mixer") == ["MIXER-2"]  # case-insensitive
    assert serials("?q=glob") == ["MIXER-2"]  # customer name matches too
    assert serials("?q=%25") == []  # a literal %, not a wildcard
    assert serials("?limit=1&offset=1") == ["MIXER-2"]
    assert server.client.get("/api/v1/devices?status=sleepy", headers=support).status_code == 422

    listed = server.client.get("/api/v1/devices?q=PRESS-1", headers=support).json()
    assert listed["total"] == 1
    assert set(listed["devices"][0]) == {
        "id", "name", "serial", "model", "customer", "agent_version", "enrolled_at",
        "last_seen_at", "report_interval_s", "status", "health_status",
    }  # fmt: skip
    assert listed["devices"][0]["customer"] == "Acme"
    assert listed["devices"][0]["agent_version"] == "0.1.0"
