"""The dashboard's pages through the ASGI app: login, device list, device page, commands, audit."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from server.audit import record_audit
from server.models import AuditEvent, Command
from tests.server.conftest import PASSWORD, EnrolledDevice, ServerHelper, health, inventory, report

HOSTILE_NAME = "<script>alert(1)</script>"


def csrf_token_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def log_in(client: TestClient, name: str, password: str = PASSWORD, next_path: str = "/") -> Any:
    form = client.get("/login")
    assert form.status_code == 200
    return client.post(
        "/login",
        data={"name": name, "password": password, "csrf_token": csrf_token_of(form.text), "next": next_path},
        follow_redirects=False,
    )


def listed_serials(html: str) -> list[str]:
    return re.findall(r'<tr class="device" data-serial="([^"]*)"', html)


def full_inventory(camera: str, kernel: str = "6.1.0-18-amd64", hostile_line: str = "") -> dict[str, Any]:
    """An inventory with every collector filled in, shaped like ``telemaint inventory --json``."""
    payload = inventory({"camera-firmware": camera, "plc": "4.1"}, kernel=kernel)
    payload["collectors"]["network"] = {
        "status": "ok",
        "message": None,
        "duration_ms": 4.2,
        "data": {
            "interfaces": [
                {
                    "name": "lo",
                    "mac": "00:00:00:00:00:00",
                    "mtu": 65536,
                    "up": True,
                    "speed_mbps": None,
                    "duplex": None,
                    "addresses": [{"family": "ipv4", "address": "127.0.0.1", "netmask": "255.0.0.0", "prefixlen": 8}],
                },
                {
                    "name": "enp3s0",
                    "mac": "02:42:ac:11:00:02",
                    "mtu": 1500,
                    "up": True,
                    "speed_mbps": 1000,
                    "duplex": "full",
                    "addresses": [
                        {"family": "ipv4", "address": "192.0.2.10", "netmask": "255.255.255.0", "prefixlen": 24},
                        {"family": "ipv6", "address": "fd00::10", "netmask": "ffff:ffff:ffff:ffff::", "prefixlen": 64},
                    ],
                },
            ],
            "gateways": [{"family": "ipv4", "gateway": "192.0.2.1", "interface": "enp3s0"}],
            "dns": {
                "nameservers": ["192.0.2.53", "192.0.2.54"],
                "search": ["plant.example"],
                "source_files": ["/etc/resolv.conf"],
                "systemd_resolved_stub": False,
                "error": None,
            },
            "ntp": [
                {"server": "ntp.plant.example", "kind": "server", "daemon": "chrony", "source_file": "/etc/chrony"}
            ],
            "clock": {
                "synchronized": False,
                "max_error_s": 16.0,
                "estimated_error_s": 16.0,
                "kernel_state": 5,
                "unsync_flag": True,
            },
            "listening_tcp": [{"address": "0.0.0.0", "port": 502, "family": "ipv4"}],
        },
    }
    payload["collectors"]["logs"] = {
        "status": "ok",
        "message": None,
        "duration_ms": 20,
        "data": {
            "journal": {
                "available": True,
                "note": None,
                "since": "2026-03-01T09:00:00Z",
                "priority": "warning",
                "entries": [
                    {
                        "time": "2026-03-02T08:10:00Z",
                        "priority": 4,
                        "priority_name": "warning",
                        "unit": "vision.service",
                        "identifier": "vision",
                        "pid": 812,
                        "message": "frame rate below target",
                    },
                    {
                        "time": "2026-03-02T08:11:00Z",
                        "priority": 3,
                        "priority_name": "err",
                        "unit": "vision.service",
                        "identifier": "vision",
                        "pid": 812,
                        "message": "camera 2 did not answer within 500 ms",
                    },
                ],
                "count": 2,
                "malformed": 0,
                "truncated": False,
                "warnings": [],
                "error": None,
                "error_count": 0,
            },
            "files": [
                {
                    "path": "/opt/vision/log/vision.log",
                    "lines": [
                        "08:00:01 INFO calibration loaded",
                        "08:02:13 ERROR camera link lost on port 2",
                        f"08:02:14 INFO retrying {hostile_line}",
                        "08:02:15 WARN exposure clipped",
                    ],
                    "truncated": False,
                    "files_read": ["/opt/vision/log/vision.log"],
                    "error_count": 2 if hostile_line else 1,
                    "error_lines": [1, 2] if hostile_line else [1],
                    "error": None,
                },
                {
                    "path": "/opt/plc/plc.log",
                    "lines": ["cycle 1 ok", "cycle 2 ok", "E42 watchdog tripped"],
                    "truncated": False,
                    "files_read": ["/opt/plc/plc.log"],
                    "error_count": 1,
                    "error_lines": [2],
                    "error": None,
                },
                {
                    "path": "/opt/legacy/unmarked.log",
                    "lines": ["boot", "E17 stall"],
                    "truncated": False,
                    "files_read": ["/opt/legacy/unmarked.log"],
                    "error_count": 1,
                    "error": None,
                },
            ],
            "summary": {"errors": 2, "by_source": {"/opt/vision/log/vision.log": 1, "/opt/plc/plc.log": 1}},
        },
    }
    return payload


def health_report(disk_status: str, message: str = "disk / 42% used") -> dict[str, Any]:
    exit_codes = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
    checks = [
        {
            "name": "root-disk",
            "type": "disk_usage",
            "status": disk_status,
            "exit_code": exit_codes[disk_status],
            "message": message,
            "value": 91.5,
            "unit": "%",
            "perfdata": [],
            "duration_ms": 0.4,
        },
        {
            "name": "vision-app",
            "type": "process",
            "status": "OK",
            "exit_code": 0,
            "message": "1 vision-server process",
            "value": 1,
            "unit": None,
            "perfdata": [],
            "duration_ms": 2.0,
        },
    ]
    return health(disk_status, checks)


@pytest.fixture
def fleet(server: ServerHelper) -> dict[str, EnrolledDevice]:
    """press-1 (Acme, health OK, late), lathe-2 (Beta, CRITICAL, online), robot-3 (Acme, never reported)."""
    devices = {}
    for serial, name, customer in (
        ("SN-P1", "press-1", "Acme"),
        ("SN-L2", "lathe-2", "Beta"),
        ("SN-R3", "robot-3", "Acme"),
    ):
        body = server.enroll_body(server.code(customer), serial, name=name)
        response = server.client.post("/api/v1/enroll", json=body)
        assert response.status_code == 201, response.text
        devices[name] = EnrolledDevice(id=response.json()["device_id"], token=response.json()["token"], serial=serial)
    assert server.post_reports(devices["press-1"], [report("health", health("OK"), server.clock())]).status_code == 200
    server.clock.advance(300)
    lathe_health = report("health", health("CRITICAL"), server.clock())
    assert server.post_reports(devices["lathe-2"], [lathe_health]).status_code == 200
    return devices


def test_pages_need_a_login_and_come_back_after_it(server: ServerHelper, fleet: dict[str, EnrolledDevice]) -> None:
    client = server.client
    press = fleet["press-1"]
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    response = client.get(f"/devices/{press.id}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next=%2Fdevices%2F{press.id}"
    assert client.get("/audit", follow_redirects=False).status_code == 303
    refused = client.post(f"/devices/{press.id}/commands", data={"kind": "run_checks"}, follow_redirects=False)
    assert refused.headers["location"] == "/login"

    server.user("sam", "support")
    done = log_in(client, "sam", next_path=f"/devices/{press.id}")
    assert done.status_code == 303
    assert done.headers["location"] == f"/devices/{press.id}"
    page = client.get(f"/devices/{press.id}")
    assert page.status_code == 200
    assert "press-1" in page.text
    assert "Content-Security-Policy" in page.headers and page.headers["X-Frame-Options"] == "DENY"
    # the login page sends a logged-in user on; a foreign "next" is not followed
    assert client.get("/login?next=//evil.example/", follow_redirects=False).headers["location"] == "/"

    logout = client.post("/logout", data={"csrf_token": csrf_token_of(page.text)}, follow_redirects=False)
    assert logout.headers["location"] == "/login"
    assert client.get("/", follow_redirects=False).status_code == 303


def test_wrong_password_shows_an_error_and_repeated_failures_are_throttled(server: ServerHelper) -> None:
    server.user("sam", "support")
    response = log_in(server.client, "sam", "not the password")
    assert response.status_code == 401
    assert "Wrong user name or password." in response.text
    assert 'value="sam"' in response.text  # the name stays filled in, the password does not
    assert "not the password" not in response.text
    assert "telemaint_session" not in server.client.cookies
    with server.sessionmaker() as session:
        failed = session.scalars(select(AuditEvent).where(AuditEvent.action == "login.failed")).all()
    assert [e.target for e in failed] == ["user:sam"]

    for _ in range(4):
        assert log_in(server.client, "sam", "still wrong").status_code == 401
    throttled = log_in(server.client, "sam")  # the right password, but too late
    assert throttled.status_code == 429
    assert "Too many failed logins" in throttled.text
    assert "telemaint_session" not in server.client.cookies
    server.clock.advance(301)
    assert log_in(server.client, "sam").status_code == 303


def test_login_form_without_its_csrf_token_is_refused(server: ServerHelper) -> None:
    server.user("sam", "support")
    server.client.get("/login")
    response = server.client.post("/login", data={"name": "sam", "password": PASSWORD}, follow_redirects=False)
    assert response.status_code == 403
    assert "telemaint_session" not in server.client.cookies


def test_device_list_search_and_filters(server: ServerHelper, fleet: dict[str, EnrolledDevice]) -> None:
    server.user("sam", "support")
    assert log_in(server.client, "sam").status_code == 303

    page = server.client.get("/")
    assert listed_serials(page.text) == ["SN-L2", "SN-P1", "SN-R3"]  # by name
    row = re.search(r'data-serial="SN-L2".*?</tr>', page.text, re.S)
    assert row and "status-online" in row.group(0) and "health-critical" in row.group(0) and "Beta" in row.group(0)
    row = re.search(r'data-serial="SN-P1".*?</tr>', page.text, re.S)
    assert row and "status-late" in row.group(0) and "health-ok" in row.group(0)
    row = re.search(r'data-serial="SN-R3".*?</tr>', page.text, re.S)
    assert row and "status-offline" in row.group(0) and "never" in row.group(0)

    def serials(**params: str) -> list[str]:
        response = server.client.get("/", params=params)
        assert response.status_code == 200
        return listed_serials(response.text)

    assert serials(q="lathe") == ["SN-L2"]
    assert serials(q="sn-r") == ["SN-R3"]  # serial, any case
    assert serials(q="acme") == ["SN-P1", "SN-R3"]  # customer name
    assert serials(q="P7") == ["SN-L2", "SN-P1", "SN-R3"]  # model
    assert serials(status="late") == ["SN-P1"]
    assert serials(status="offline") == ["SN-R3"]
    assert serials(health="CRITICAL") == ["SN-L2"]
    assert serials(customer="Acme") == ["SN-P1", "SN-R3"]
    assert serials(customer="Acme", health="OK") == ["SN-P1"]
    assert serials(q="nothing like it") == []
    # a bad filter value is ignored rather than failing the page
    assert serials(status="sideways", health="GREAT") == ["SN-L2", "SN-P1", "SN-R3"]
    assert '<option value="Beta">' in server.client.get("/").text


def test_customer_viewer_sees_only_its_devices_and_cannot_queue(
    server: ServerHelper, fleet: dict[str, EnrolledDevice]
) -> None:
    server.user("carol", "customer", customer="Acme")
    assert log_in(server.client, "carol").status_code == 303
    page = server.client.get("/")
    assert listed_serials(page.text) == ["SN-P1", "SN-R3"]
    assert "lathe-2" not in page.text
    assert 'name="customer"' not in page.text  # no customer filter for a viewer
    assert listed_serials(server.client.get("/", params={"q": "lathe"}).text) == []
    assert listed_serials(server.client.get("/", params={"customer": "Beta"}).text) == ["SN-P1", "SN-R3"]

    other = server.client.get(f"/devices/{fleet['lathe-2'].id}")
    assert other.status_code == 404
    assert "lathe-2" not in other.text and "SN-L2" not in other.text
    assert server.client.get("/devices/999999").status_code == 404
    assert server.client.get("/devices/not-a-number").status_code == 404

    own = server.client.get(f"/devices/{fleet['press-1'].id}")
    assert own.status_code == 200
    assert "Run checks now" not in own.text and "Collect inventory" not in own.text
    queued = server.client.post(
        f"/devices/{fleet['press-1'].id}/commands",
        data={"kind": "run_checks", "csrf_token": csrf_token_of(own.text)},
        follow_redirects=False,
    )
    assert queued.status_code == 403
    assert server.client.get("/audit").status_code == 403
    with server.sessionmaker() as session:
        assert session.scalars(select(Command)).all() == []


def test_device_page_shows_network_versions_history_health_and_log_errors(server: ServerHelper) -> None:
    device = server.enroll("SN-V1", customer="Acme")
    first = server.clock()
    assert server.post_reports(
        device,
        [
            report("inventory", full_inventory("2.3.1"), first),
            report("health", health_report("WARNING", "/ is 91.5% full"), first),
        ],
    ).json()["acked"]
    later = server.clock.advance(3600)
    assert server.post_reports(
        device,
        [
            report("inventory", full_inventory("2.4.0", kernel="6.1.0-21-amd64"), later),
            report("health", health_report("CRITICAL", "/ is 97.0% full"), later + timedelta(seconds=5)),
        ],
    ).json()["acked"]
    server.user("sam", "support")
    log_in(server.client, "sam")
    page = server.client.get(f"/devices/{device.id}")
    assert page.status_code == 200
    html = page.text

    # identity
    assert "SN-V1" in html and "Acme" in html and "0.1.0" in html
    # network sheet: interfaces with addresses, masks, MACs and link; gateway, DNS, NTP, ports
    network = html[html.index('id="network"') : html.index('id="versions"')]
    for expected in (
        "enp3s0",
        "192.0.2.10/24",
        "255.255.255.0",
        "fd00::10/64",
        "02:42:ac:11:00:02",
        "1000 Mb/s full",
        "192.0.2.1",
        "192.0.2.53",
        "192.0.2.54",
        "plant.example",
        "ntp.plant.example",
        "not synchronised",
        "0.0.0.0:502",
    ):
        assert expected in network, expected
    assert network.index("enp3s0") < network.index(">lo<")  # the loopback comes last
    # versions now and their history
    versions = html[html.index('id="versions"') : html.index('id="logs"')]
    assert "camera-firmware" in versions and "2.4.0" in versions and "6.1.0-21-amd64" in versions
    assert "BIOS" in versions and "1.7.2" in versions and "1203 packages" in versions
    history = versions[versions.index("Change history") :]
    assert re.search(
        r"camera-firmware</strong>\s*2\.3\.1 → 2\.4\.0\s*<span class=\"muted\">on 2026-03-02 10:00:00 UTC", history
    )
    assert re.search(r"Kernel</strong>\s*6\.1\.0-18-amd64 → 6\.1\.0-21-amd64", history)
    # health now (worst first) and its recent history
    health_section = html[html.index('id="health"') : html.index('id="commands"')]
    assert "/ is 97.0% full" in health_section and "/ is 91.5% full" not in health_section
    assert health_section.index("root-disk") < health_section.index("vision-app")
    assert "Recent history" in health_section
    disk_row = re.search(r"<tr><td>root-disk</td>(.*?)</tr>", health_section, re.S)
    assert disk_row and re.findall(r'title="(\w+)"', disk_row.group(1)) == ["CRITICAL", "WARNING"]
    # log errors: matching lines and journal entries of priority err, not the rest
    logs = html[html.index('id="logs"') :]
    assert "ERROR camera link lost on port 2" in logs
    assert "camera 2 did not answer within 500 ms" in logs
    assert "calibration loaded" not in logs and "frame rate below target" not in logs
    # the PLC log's error matched the agent's own pattern: the agent marked it
    assert "E42 watchdog tripped" in logs and "cycle 1 ok" not in logs
    # errors counted but not marked: the last lines are shown, and the page says so
    assert "E17 stall" in logs and "did not mark them" in logs


def test_device_page_renders_skipped_failed_and_odd_collectors(server: ServerHelper) -> None:
    device = server.enroll("SN-S1")
    server.user("sam", "support")
    log_in(server.client, "sam")
    empty = server.client.get(f"/devices/{device.id}")
    assert empty.status_code == 200
    assert "No health report yet." in empty.text and "No inventory yet." in empty.text

    odd = inventory({"camera-firmware": None})
    odd["collectors"]["logs"] = {"status": "failed", "message": "PermissionError: /var/log", "data": {}}
    odd["collectors"]["system"] = {"status": "ok", "data": {"disks": "many", "memory": [1, 2], "cpu": None}}
    odd["collectors"]["versions"]["data"]["components"] = [
        {"name": "camera-firmware", "error": "timed out after 5s"},
        7,
    ]
    bad_health = {"status": "SHINY", "checks": [{"name": {"x": 1}, "status": 3}, "junk"]}
    server.post_reports(
        device, [report("inventory", odd, server.clock()), report("health", bad_health, server.clock())]
    )
    page = server.client.get(f"/devices/{device.id}")
    assert page.status_code == 200
    assert "The network collector was <strong>skipped</strong>: disabled." in page.text
    assert "The logs collector was <strong>failed</strong>: PermissionError: /var/log." in page.text
    assert "camera-firmware: version unreadable: timed out after 5s" in page.text
    assert server.client.get("/").status_code == 200


def test_device_page_shows_times_that_utc_cannot_hold_as_text(server: ServerHelper) -> None:
    """A device cannot take its own page down with a time at the edge of the calendar."""
    device = server.enroll("SN-EDGE")
    server.user("sam", "support")
    log_in(server.client, "sam")
    edge = inventory()
    edge["collectors"]["system"] = {"status": "ok", "data": {"boot_time": "9999-12-31T23:59:59-14:00"}}
    edge_health = {**health("OK"), "generated_at": "0001-01-01T00:00:00+14:00"}
    stored = server.post_reports(
        device, [report("inventory", edge, server.clock()), report("health", edge_health, server.clock())]
    )
    assert stored.status_code == 200
    page = server.client.get(f"/devices/{device.id}")
    assert page.status_code == 200
    assert "9999-12-31T23:59:59-14:00" in page.text or "0001-01-01T00:00:00+14:00" in page.text


def test_run_checks_now_queues_a_command_and_shows_its_result(
    server: ServerHelper, fleet: dict[str, EnrolledDevice]
) -> None:
    press = fleet["press-1"]
    server.user("sam", "support")
    log_in(server.client, "sam")
    page = server.client.get(f"/devices/{press.id}")
    assert "Run checks now" in page.text and "Collect inventory" in page.text
    assert 'http-equiv="refresh"' not in page.text

    response = server.client.post(
        f"/devices/{press.id}/commands",
        data={"kind": "run_checks", "csrf_token": csrf_token_of(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/devices/{press.id}#commands"
    commands = server.client.get(f"/api/v1/devices/{press.id}/commands").json()["commands"]
    assert [(c["kind"], c["status"], c["created_by"]) for c in commands] == [("run_checks", "queued", "sam")]
    with server.sessionmaker() as session:
        queued = session.scalars(select(AuditEvent).where(AuditEvent.action == "command.queue")).all()
    assert [(e.actor, e.details["kind"]) for e in queued] == [("user:sam", "run_checks")]

    waiting = server.client.get(f"/devices/{press.id}")
    assert 'data-status="queued"' in waiting.text
    assert '<meta http-equiv="refresh" content="3">' in waiting.text

    polled = server.client.get("/api/v1/agent/commands", headers=press.headers).json()["commands"]
    assert [c["kind"] for c in polled] == ["run_checks"]
    result = {"status": "done", "message": "checks run", "result": {"status": "WARNING", "checks": 6}}
    posted = server.client.post(f"/api/v1/agent/commands/{polled[0]['id']}/result", json=result, headers=press.headers)
    assert posted.status_code == 200

    arrived = server.client.get(f"/devices/{press.id}")
    row = re.search(r'<tr class="command" data-command-id="\d+" data-status="done">.*?</tr>', arrived.text, re.S)
    assert row and "checks run" in row.group(0) and "status: WARNING" in row.group(0)
    assert 'http-equiv="refresh"' not in arrived.text


def test_post_forms_without_a_valid_csrf_token_are_refused(
    server: ServerHelper, fleet: dict[str, EnrolledDevice]
) -> None:
    press = fleet["press-1"]
    server.user("sam", "support")
    server.user("ada", "admin")
    other = TestClient(server.client.app)
    log_in(other, "ada")
    foreign_token = csrf_token_of(other.get("/").text)
    log_in(server.client, "sam")
    own_token = csrf_token_of(server.client.get("/").text)
    assert foreign_token != own_token

    url = f"/devices/{press.id}/commands"
    for data in (
        {"kind": "run_checks"},
        {"kind": "run_checks", "csrf_token": "0" * 64},
        {"kind": "run_checks", "csrf_token": foreign_token},
    ):
        response = server.client.post(url, data=data, follow_redirects=False)
        assert response.status_code == 403, data
    assert server.client.get(f"/api/v1/devices/{press.id}/commands").json()["commands"] == []
    assert server.client.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert server.client.get("/", follow_redirects=False).status_code == 200  # still logged in
    # a token is bound to its session: after logging out and in again the old one is refused
    server.client.post("/logout", data={"csrf_token": own_token})
    server.clock.advance(1)
    assert log_in(server.client, "sam").status_code == 303
    assert server.client.post(url, data={"kind": "run_checks", "csrf_token": own_token}).status_code == 403
    new_token = csrf_token_of(server.client.get("/").text)
    response = server.client.post(url, data={"kind": "run_checks", "csrf_token": new_token}, follow_redirects=False)
    assert response.status_code == 303


def test_audit_page_is_for_admins_newest_first_and_paginated(server: ServerHelper) -> None:
    server.user("sam", "support")
    server.user("ada", "admin")
    with server.sessionmaker() as session:
        for n in range(55):
            record_audit(session, at=server.clock(), actor="test", action="test.event", target=f"item:{n}")
        session.commit()
    log_in(server.client, "sam")
    assert server.client.get("/audit").status_code == 403
    assert "Audit log" not in server.client.get("/").text  # no link for non-admins

    admin = TestClient(server.client.app)
    server.clock.advance(60)
    log_in(admin, "ada")
    first = admin.get("/audit")
    assert first.status_code == 200
    targets = re.findall(r'<td class="target">([^<]*)</td>', first.text)
    assert targets[:3] == ["user:ada", "user:sam", "item:54"]  # the newest first
    assert len(re.findall(r'<tr class="event">', first.text)) == 50
    assert "Older →" in first.text
    second = admin.get("/audit", params={"page": 2})
    assert re.findall(r'<td class="target">([^<]*)</td>', second.text) == [f"item:{n}" for n in range(6, -1, -1)]
    assert "Older →" not in second.text and "← Newer" in second.text
    failed = admin.get("/audit", params={"action": "login.ok"})
    assert re.findall(r'<td class="actor">([^<]*)</td>', failed.text) == ["user:ada", "user:sam"]


def test_hostile_text_from_devices_is_escaped(server: ServerHelper) -> None:
    body = server.enroll_body(server.code("<b>Evil & Co</b>"), "SN-X<1>", name=HOSTILE_NAME, model='"><img src=x>')
    response = server.client.post("/api/v1/enroll", json=body)
    assert response.status_code == 201, response.text
    device = EnrolledDevice(id=response.json()["device_id"], token=response.json()["token"], serial="SN-X<1>")
    hostile_line = "<img src=x onerror=alert(2)> ERROR"
    payload = full_inventory("<svg onload=alert(3)>", hostile_line=hostile_line)
    hostile_health = health_report("CRITICAL", "<iframe src=//evil>")
    server.post_reports(
        device, [report("inventory", payload, server.clock()), report("health", hostile_health, server.clock())]
    )
    server.user("sam", "support")
    log_in(server.client, "sam")

    for path in ("/", f"/devices/{device.id}", "/?q=" + HOSTILE_NAME):
        html = server.client.get(path).text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
        assert "<script" not in html and "<img src=x" not in html and "<iframe" not in html and "<svg" not in html
        assert "<b>Evil" not in html
    device_html = server.client.get(f"/devices/{device.id}").text
    assert "&lt;img src=x onerror=alert(2)&gt; ERROR" in device_html
    assert "&lt;iframe src=//evil&gt;" in device_html


def test_admin_assigns_an_unassigned_device_on_its_page(server: ServerHelper) -> None:
    body = server.enroll_body(server.code(), "SN-U1", customer="Acme")
    device_id = server.client.post("/api/v1/enroll", json=body).json()["device_id"]
    server.user("carol", "customer", customer="Acme")
    server.user("sam", "support")
    server.user("ada", "admin")

    log_in(server.client, "carol")
    assert listed_serials(server.client.get("/").text) == []
    assert server.client.get(f"/devices/{device_id}").status_code == 404

    server.client.cookies.clear()
    log_in(server.client, "sam")
    row = re.search(r'<tr class="device" data-serial="SN-U1">.*?</tr>', server.client.get("/").text, re.S)
    assert row and "unassigned" in row.group(0)
    page = server.client.get(f"/devices/{device_id}").text
    assert "The machine says: Acme" in page
    assert f'action="/devices/{device_id}/customer"' not in page
    refused = server.client.post(
        f"/devices/{device_id}/customer", data={"customer": "Acme", "csrf_token": csrf_token_of(page)}
    )
    assert refused.status_code == 403

    server.client.cookies.clear()
    log_in(server.client, "ada")
    page = server.client.get(f"/devices/{device_id}").text
    assert f'action="/devices/{device_id}/customer"' in page
    stale = server.client.post(f"/devices/{device_id}/customer", data={"customer": "Acme", "csrf_token": "x"})
    assert stale.status_code == 403
    hidden = server.client.post(
        f"/devices/{device_id}/customer", data={"customer": "Ac\u202eme", "csrf_token": csrf_token_of(page)}
    )
    assert hidden.status_code == 400 and "U+202E" in hidden.text
    assigned = server.client.post(
        f"/devices/{device_id}/customer",
        data={"customer": "Acme", "csrf_token": csrf_token_of(page)},
        follow_redirects=False,
    )
    assert assigned.status_code == 303 and assigned.headers["location"] == f"/devices/{device_id}#identity"
    assert server.client.get(f"/api/v1/devices/{device_id}").json()["customer"] == "Acme"
    assert "Unassign" in server.client.get(f"/devices/{device_id}").text
    with server.sessionmaker() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "device.assign")).all()
    assert [(e.actor, e.details["to"]) for e in events] == [("user:ada", "Acme")]

    server.client.cookies.clear()
    log_in(server.client, "carol")
    assert listed_serials(server.client.get("/").text) == ["SN-U1"]
