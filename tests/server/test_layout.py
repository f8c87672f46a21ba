"""The server's shape: independent of the agent package, its API published as OpenAPI."""

from __future__ import annotations

import ast
from pathlib import Path

from fastapi.testclient import TestClient

SERVER_DIR = Path(__file__).resolve().parents[2] / "server"


def test_server_never_imports_the_agent() -> None:
    offenders = []
    for path in sorted(SERVER_DIR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n == "agent" or n.startswith("agent.")]
    assert offenders == []


def test_openapi_is_published_with_the_wire_models(client: TestClient) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert {"/api/v1/enroll", "/api/v1/agent/reports", "/api/v1/agent/commands", "/api/v1/devices"} <= set(
        spec["paths"]
    )
    schemas = spec["components"]["schemas"]
    assert {"EnrollIn", "EnrollOut", "ReportIn", "ReportBatchIn", "AckOut", "CommandResultIn", "DevicePublic"} <= set(
        schemas
    )
    assert schemas["ReportIn"]["properties"]["kind"]["enum"] == ["heartbeat", "inventory", "health", "events"]
    assert {"DeviceToken", "UserToken", "SessionCookie"} <= set(spec["components"]["securitySchemes"])
