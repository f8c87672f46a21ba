"""Bad input gets a 4xx with a reason, never a 500: garbage, wrong types, huge or deep bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from server.config import MiB
from tests.server.conftest import EnrolledDevice, ServerHelper, report

JSON = {"content-type": "application/json"}


@pytest.fixture
def device(server: ServerHelper) -> EnrolledDevice:
    return server.enroll()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json at all",
        b"\xff\xfe\x00garbage",
        b"[]",
        b"null",
        b'{"reports": "many"}',
        b'{"reports": [1, 2]}',
        b'{"reports": [{"id": 5, "kind": "heartbeat", "created_at": "yesterday", "payload": []}]}',
        b'{"reports": [{"id": "6f1c", "kind": null}]}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_garbage_report_bodies_are_4xx(server: ServerHelper, device: EnrolledDevice, body: bytes) -> None:
    response = server.client.post("/api/v1/agent/reports", content=body, headers={**JSON, **device.headers})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]


def test_deeply_nested_payload_is_422(server: ServerHelper, device: EnrolledDevice) -> None:
    payload: dict[str, object] = {}
    node = payload
    for _ in range(200):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    response = server.post_reports(device, [report("events", payload, server.clock())])
    assert response.status_code == 422
    assert "nested deeper" in response.json()["detail"][0]["msg"]


def test_awkward_strings_in_payloads_are_stored(server: ServerHelper, device: EnrolledDevice) -> None:
    payload = {"nul": "a\x00b", "surrogate": "\ud800", "emoji": "\U0001f525", "ctl": "\x1b[31m"}
    inventory = {"agent_version": "0.1\x00", "collectors": {"versions": {"data": {"components": [
        {"name": "cam\x00era", "version": "2.\ud8003"}]}}}}  # fmt: skip
    batch = [report("events", payload, server.clock()), report("inventory", inventory, server.clock())]
    body = json.dumps({"reports": batch}).encode()  # escapes keep NUL and the lone surrogate
    response = server.client.post("/api/v1/agent/reports", content=body, headers={**JSON, **device.headers})
    assert response.status_code == 200, response.text
    admin = server.user_headers("root", "admin")
    stored = server.client.get(f"/api/v1/devices/{device.id}/reports/{batch[0]['id']}", headers=admin).json()
    stored_payload = stored["payload"]
    assert stored_payload["emoji"] == "\U0001f525"
    assert stored_payload["surrogate"] == "\ufffd"  # undecodable bytes on the agent, made readable
    assert stored_payload["nul"] == "a\x00b"


def test_wrong_types_are_422_with_the_field_named(server: ServerHelper, device: EnrolledDevice) -> None:
    item = report("heartbeat", {}, server.clock())
    item["created_at"] = {"when": "now"}
    response = server.post_reports(device, [item])
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "reports", 0, "created_at"]
    assert "input" not in error  # the offending input is not echoed back


def test_oversized_report_body_is_413(server: ServerHelper, device: EnrolledDevice) -> None:
    big = report("events", {"blob": "x" * (8 * MiB)}, server.clock())
    response = server.post_reports(device, [big])
    assert response.status_code == 413
    # just under the agent limit is fine
    fits = report("events", {"blob": "x" * (7 * MiB)}, server.clock())
    assert server.post_reports(device, [fits]).status_code == 200


def test_oversized_body_without_content_length_is_413(server: ServerHelper, device: EnrolledDevice) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"reports": [{"id": "6f1c2d9e-4d0b-4a59-9d36-0b9f1e3c2a11", "kind": "events", '
        yield b'"created_at": "2026-03-02T09:00:00Z", "payload": {"blob": "'
        for _ in range(9):
            yield b"x" * MiB
        yield b'"}}]}'

    response = server.client.post("/api/v1/agent/reports", content=chunks(), headers={**JSON, **device.headers})
    assert response.status_code == 413


def test_other_endpoints_have_a_smaller_limit(server: ServerHelper) -> None:
    body = server.enroll_body(server.code())
    body["name"] = "x" * (2 * MiB)
    assert server.client.post("/api/v1/enroll", json=body).status_code == 413
    login = {"name": "anna", "password": "x" * (2 * MiB)}
    assert server.client.post("/api/v1/login", json=login).status_code == 413
    lying = server.client.post("/api/v1/enroll", content=b"{}", headers={**JSON, "content-length": str(100 * MiB)})
    assert lying.status_code in (400, 413)


def test_garbage_enrollment_and_command_bodies_are_4xx(server: ServerHelper, device: EnrolledDevice) -> None:
    support = server.user_headers("anna", "support")
    cases = [
        ("/api/v1/enroll", {}, b"{"),
        ("/api/v1/enroll", {}, b'{"code": 1, "serial": [], "name": {}}'),
        (f"/api/v1/devices/{device.id}/commands", support, b"[1]"),
        (f"/api/v1/devices/{device.id}/commands", support, b'{"kind": "run_checks", "args": "x"}'),
        ("/api/v1/agent/commands/1/result", device.headers, b'{"status": 1}'),
        ("/api/v1/users/me/tokens", support, b'{"name": "x\\u0000y"}'),
    ]
    for path, headers, body in cases:
        response = server.client.post(path, content=body, headers={**JSON, **headers})
        assert 400 <= response.status_code < 500, (path, body, response.status_code)


def test_awkward_query_strings_are_4xx_or_empty(server: ServerHelper) -> None:
    support = server.user_headers("anna", "support")
    for query in ("?q=%00", "?customer=%00", "?limit=0", "?limit=99999", "?offset=-1", "?q=" + "x" * 201):
        response = server.client.get(f"/api/v1/devices{query}", headers=support)
        assert response.status_code == 422, query
    assert server.client.get("/api/v1/devices?q=%E2%82%AC", headers=support).status_code == 200


NUMBER = "__number__"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_nan_and_infinity_in_reports_and_results_are_422(
    server: ServerHelper, device: EnrolledDevice, number: str
) -> None:
    item = report("health", {"checks": [{"name": "t", "value": NUMBER}]}, server.clock())
    body = json.dumps({"reports": [item]}).replace(f'"{NUMBER}"', number)
    response = server.client.post("/api/v1/agent/reports", content=body, headers={**JSON, **device.headers})
    assert response.status_code == 422, response.text
    assert "NaN and Infinity" in response.json()["detail"][0]["msg"]
    support = server.user_headers("anna", "support")
    command = server.client.post(f"/api/v1/devices/{device.id}/commands", json={"kind": "run_checks"}, headers=support)
    result = json.dumps({"status": "done", "result": {"load": [NUMBER]}}).replace(f'"{NUMBER}"', number)
    path = f"/api/v1/agent/commands/{command.json()['id']}/result"
    assert server.client.post(path, content=result, headers={**JSON, **device.headers}).status_code == 422
    admin = server.user_headers("root", "admin")
    assert server.client.get(f"/api/v1/devices/{device.id}/reports", headers=admin).json()["reports"] == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "press-7\u202e1-sserp"),  # right-to-left override: shows as another name
        ("name", "press\u200b7"),  # zero-width space
        ("model", "P7\u2066x"),  # bidi isolate
        ("customer", "Acme\u00a0GmbH"),  # no-break space looks like a space
        ("serial", "SN\ufeff-1"),  # byte order mark
        ("name", "press\u00ad7"),  # soft hyphen
    ],
)
def test_names_shown_to_support_refuse_look_alike_characters(server: ServerHelper, field: str, value: str) -> None:
    body = server.enroll_body(server.code(), **{field: value})
    response = server.client.post("/api/v1/enroll", json=body)
    assert response.status_code == 422, response.text
    assert field in {error["loc"][-1] for error in response.json()["detail"]}


def test_plain_unicode_names_are_taken(server: ServerHelper) -> None:
    body = server.enroll_body(server.code(), name="Presse 7 Halle Süd", model="Δ-3000", customer="Ōsaka Kōgyō")
    assert server.client.post("/api/v1/enroll", json=body).status_code == 201
