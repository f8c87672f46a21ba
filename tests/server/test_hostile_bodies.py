"""Hostile request bodies on every operation of the OpenAPI: deeply nested, oversized, not JSON.

Each is a 4xx with a JSON error, never a 500, whatever the credentials: the list of operations
comes from the published OpenAPI, so a route added later is covered without touching this file.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.server.conftest import ServerHelper

NESTING_LEVELS = 100_000
BODIES = {
    "nested arrays": b"[" * NESTING_LEVELS + b"]" * NESTING_LEVELS,
    "nested objects": b'{"a":' * NESTING_LEVELS + b"1" + b"}" * NESTING_LEVELS,
    "nested within the recursion limit": b'{"a":' * 900 + b"1" + b"}" * 900,
    "nested in a list of objects": b'{"reports":[' + b"[" * NESTING_LEVELS + b"]" * NESTING_LEVELS + b"]}",
    "truncated": b'{"name": "admin", "pass',
    "not UTF-8": b'{"name": "\xff\xfe"}',
    "NaN": b'{"name": NaN, "password": Infinity}',
}


def _body_operations(server: ServerHelper) -> list[tuple[str, str]]:
    spec = server.client.get("/api/v1/openapi.json").json()
    operations = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            if isinstance(operation, dict) and "requestBody" in operation:
                concrete = re.sub(r"\{[^}]+\}", "1", path)
                operations.append((method.upper(), concrete))
    return operations


@pytest.fixture
def credentials(server: ServerHelper) -> dict[str, dict[str, str]]:
    device = server.enroll(serial="HOSTILE-1", customer="Acme")
    return {"none": {}, "user": server.user_headers("root", "admin"), "device": device.headers}


@pytest.mark.parametrize("body_name", list(BODIES))
def test_hostile_json_bodies_are_a_4xx_on_every_operation(
    server: ServerHelper, credentials: dict[str, dict[str, str]], body_name: str
) -> None:
    operations = _body_operations(server)
    assert ("POST", "/api/v1/login") in operations and ("POST", "/api/v1/agent/reports") in operations
    answers: dict[str, Any] = {}
    for method, path in operations:
        for who, headers in credentials.items():
            response = server.client.request(
                method, path, content=BODIES[body_name], headers={**headers, "Content-Type": "application/json"}
            )
            answers[f"{method} {path} as {who}"] = response.status_code
            assert 400 <= response.status_code < 500, (method, path, who, response.status_code, response.text[:200])
            assert "detail" in response.json()
    assert len(answers) == 3 * len(operations)


def test_an_oversized_body_is_413_before_it_is_read_whole(server: ServerHelper) -> None:
    limit = server.client.app.state.settings.max_body_bytes  # type: ignore[attr-defined]
    body = b'{"name": "' + b"x" * (limit + 1) + b'", "password": "y"}'
    response = server.client.post("/api/v1/login", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
