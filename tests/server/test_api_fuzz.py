"""Property-based fuzzing of the published OpenAPI with schemathesis.

Every operation of ``/api/v1/openapi.json`` gets generated requests (valid and invalid ones) with
a user token and with a device token, on SQLite and PostgreSQL. The run fails on any 5xx, on a
status code the OpenAPI does not list for the operation, and on a body that does not match the
documented schema. The number of cases is bounded so the suite stays quick; the generation is
derandomized, so a failure found in CI is found again on a developer's machine.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from tests.server.conftest import ServerHelper

# Cases per operation and generation mode (valid, invalid), per credential and database: with
# 29 operations, 29 x 2 x 25 = 1,450 requests per test, 5,800 in all (about 45 s here).
FUZZ_EXAMPLES = int(os.environ.get("TELEMAINT_FUZZ_EXAMPLES", "25"))
FUZZ_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture
def fuzz_targets(server: ServerHelper) -> dict[str, dict[str, str]]:
    """Something to find (two devices, one unassigned, a queued command) and both credentials."""
    device = server.enroll(serial="FUZZ-1", customer="Acme")
    server.enroll(serial="FUZZ-2")
    admin = server.user_headers("fuzz-admin", "admin")
    server.client.post(f"/api/v1/devices/{device.id}/commands", json={"kind": "run_checks"}, headers=admin)
    return {"user": admin, "device": device.headers}


def _fuzz(server: ServerHelper, headers: dict[str, str]) -> None:
    """Run the generated cases of every operation; fail with every problem found, one per line."""
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", server.client.app)
    problems: list[str] = []
    requests_sent = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, "the OpenAPI lists fewer operations than the API has"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @FUZZ_SETTINGS
            def run(case: Any) -> None:
                nonlocal requests_sent
                requests_sent += 1
                case.call_and_validate(headers=headers, checks=FUZZ_CHECKS)

            try:
                run()
            except Unsatisfiable:
                continue  # no invalid request exists for an operation without parameters
            except (Exception, BaseExceptionGroup) as exc:  # collect them all, then fail once
                first = str(exc).strip().splitlines()
                problems.append(f"{operation.label} ({mode.value}): {' | '.join(first[:12])}")
    assert not problems, "\n".join(problems)
    # Operations with few parameters have few distinct cases; the run as a whole must be real.
    assert requests_sent >= FUZZ_EXAMPLES * len(operations), requests_sent


FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)


def test_api_answers_a_user_token_as_documented(server: ServerHelper, fuzz_targets: dict[str, dict[str, str]]) -> None:
    _fuzz(server, fuzz_targets["user"])


def test_api_answers_a_device_token_as_documented(
    server: ServerHelper, fuzz_targets: dict[str, dict[str, str]]
) -> None:
    _fuzz(server, fuzz_targets["device"])
