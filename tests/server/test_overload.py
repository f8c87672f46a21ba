"""A server whose database connections are all taken answers 503 with Retry-After, not 500.

Many concurrent batches of one device (each waiting for that device's budget row) once took
every pooled connection, and the requests behind them failed with a pool timeout as a 500.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from server.app import create_app
from server.config import ServerSettings
from server.db import make_engine
from server.migrations import upgrade_schema
from tests.server.conftest import FakeClock, ServerHelper, report


@pytest.fixture
def tiny_pool_engine(settings: ServerSettings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


def test_no_free_database_connection_is_503_with_retry_after(
    settings: ServerSettings, tiny_pool_engine: Engine, clock: FakeClock
) -> None:
    app = create_app(settings, clock=clock, engine=tiny_pool_engine)
    with TestClient(app, raise_server_exceptions=False) as client:
        server = ServerHelper(client, clock)
        device = server.enroll()
        admin = server.user_headers("root", "admin")
        with tiny_pool_engine.connect() as held:  # the one connection, taken
            held.execute(text("SELECT 1"))
            busy = server.post_reports(device, [report("heartbeat", {}, clock())])
            listing = client.get("/api/v1/devices", headers=admin)
        assert busy.status_code == 503 and listing.status_code == 503
        assert busy.headers["retry-after"] == "5" and "busy" in busy.json()["detail"]
        # Once the connection is back, the same requests are answered.
        assert server.post_reports(device, [report("heartbeat", {}, clock())]).status_code == 200
        assert client.get("/api/v1/devices", headers=admin).status_code == 200
        documented = client.get("/api/v1/openapi.json").json()["paths"]["/api/v1/agent/reports"]["post"]
        assert "503" in documented["responses"]
