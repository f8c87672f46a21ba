"""Fixtures of the server tests: one database per test, on SQLite and on a real PostgreSQL.

``TELEMAINT_TEST_DB_URLS`` chooses the databases (comma or space separated; default
``sqlite,postgresql``):

- ``sqlite``: a fresh file per test;
- ``postgresql``: a throwaway cluster (Debian ``postgresql``; installed with apt-get when
  missing and running as root) started once per session on a loopback port;
- a ``postgresql+psycopg://...`` URL: an existing database, WIPED before every test.

Under ``CI=true`` a PostgreSQL that cannot be had fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, make_url, text

from server.app import create_app
from server.auth import USER_TOKEN_PREFIX, hash_password, hash_token, new_token
from server.config import ServerSettings, load_settings
from server.customers import get_or_create_customer
from server.db import make_engine
from server.enrollment import create_enrollment_code
from server.migrations import upgrade_schema
from server.models import ApiToken, User
from tests.processes import free_port

DB_URLS_ENV = "TELEMAINT_TEST_DB_URLS"
DEFAULT_DB_URLS = "sqlite,postgresql"
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_START_TIMEOUT_S = 60
APT_TIMEOUT_S = 900
TEST_DB_NAME = "telemaint_test"
START_TIME = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
PASSWORD = "correct horse battery staple"


def _db_params() -> list[Any]:
    entries = os.environ.get(DB_URLS_ENV, DEFAULT_DB_URLS).replace(",", " ").split()
    params = []
    for entry in entries:
        if entry in ("sqlite", "postgresql"):
            params.append(pytest.param(entry, id=entry))
        else:
            params.append(pytest.param(entry, id=make_url(entry).get_backend_name() + "-url"))
    return params


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _missing(reason: str) -> None:
    if _under_ci():
        pytest.fail(f"{reason} (CI=true: a missing PostgreSQL is a failure)")
    pytest.skip(reason)


def _pg_bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    return None


@dataclass
class PostgresCluster:
    bindir: Path
    base: Path
    port: int
    run_as: list[str]

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.base / "data"), *args],
            capture_output=True,
            text=True,
            timeout=PG_START_TIMEOUT_S + 30,
            check=False,
        )


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """Start a throwaway PostgreSQL cluster on a loopback port; stop and delete it after."""
    bindir = _pg_bindir()
    if bindir is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
            capture_output=True,
            timeout=APT_TIMEOUT_S,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        bindir = _pg_bindir()
    if bindir is None:
        _missing(f"PostgreSQL server binaries not found under {PG_BIN_GLOB}")
    assert bindir is not None
    base = Path(tempfile.mkdtemp(prefix="telemaint-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres", "postgres")
    port = free_port()
    initdb = subprocess.run(
        [
            *run_as,
            str(bindir / "initdb"),
            "-D",
            str(base / "data"),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        timeout=PG_START_TIMEOUT_S,
        check=False,
    )
    if initdb.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"initdb failed: {initdb.stderr.strip()}")
    cluster = PostgresCluster(bindir=bindir, base=base, port=port, run_as=run_as)
    options = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    started = cluster.pg_ctl(
        "-l", str(base / "postgres.log"), "-w", "-t", str(PG_START_TIMEOUT_S), "-o", options, "start"
    )
    if started.returncode != 0:
        log_text = (base / "postgres.log").read_text(errors="replace") if (base / "postgres.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {started.stderr.strip()} {log_text[-2000:]}")
    try:
        admin = create_engine(cluster.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {TEST_DB_NAME}"))
        admin.dispose()
        yield cluster
    finally:
        cluster.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _reset_postgres(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture(params=_db_params())
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of an empty database of the parametrised kind."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    if kind == "postgresql":
        cluster = request.getfixturevalue("postgres_cluster")
        url = make_url(cluster.admin_url).set(database=TEST_DB_NAME).render_as_string(hide_password=False)
    else:
        url = kind
    try:
        _reset_postgres(url)
    except Exception as exc:
        _missing(f"PostgreSQL at {make_url(url).render_as_string()} unusable: {exc}")
    return url


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime = START_TIME):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> ServerSettings:
    return load_settings(
        {"db_url": db_url, "data_dir": tmp_path / "data", "secret_key": secrets.token_urlsafe(32)},
        environ={},
    )


@pytest.fixture
def engine(settings: ServerSettings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def client(settings: ServerSettings, engine: Engine, clock: FakeClock) -> Iterator[TestClient]:
    app = create_app(settings, clock=clock, engine=engine)
    with TestClient(app) as test_client:
        yield test_client


def ssh_public_key() -> str:
    """Return a fresh OpenSSH Ed25519 public key line."""
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def report(kind: str, payload: dict[str, Any], created_at: datetime, report_id: str | None = None) -> dict[str, Any]:
    """Return one report as the agent's outbox sends it."""
    return {
        "id": report_id or str(uuid.uuid4()),
        "kind": kind,
        "created_at": created_at.isoformat().replace("+00:00", "Z"),
        "payload": payload,
    }


def inventory(
    components: dict[str, str | None] | None = None,
    *,
    agent_version: str = "0.1.0",
    kernel: str = "6.1.0-18-amd64",
    bios: str | None = "1.7.2",
    packages: tuple[int, str] | None = (1203, "sha256:9f2c4e1ab37d0c55"),
    versions_status: str = "ok",
) -> dict[str, Any]:
    """Return an inventory payload shaped like ``telemaint inventory --json``."""
    versions_data = {
        "dmi": {"vendor": "ACME", "bios": {"version": bios, "date": "03/14/2025", "vendor": "AMI"}} if bios else None,
        "os": {"name": "Debian GNU/Linux", "version_id": "12", "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
        "kernel": {"release": kernel, "version": "#1 SMP", "machine": "x86_64"},
        "packages": {"manager": "dpkg", "count": packages[0], "digest": packages[1], "changes": None}
        if packages
        else None,
        "components": [
            {"name": name, "version": version, "source": "command", "error": None if version else "timed out after 5s"}
            for name, version in (components or {}).items()
        ],
    }
    versions = (
        {"status": "ok", "message": "", "duration_ms": 12.5, "data": versions_data}
        if versions_status == "ok"
        else {"status": versions_status, "message": "disabled in agent.yaml", "duration_ms": 0, "data": None}
    )
    return {
        "agent_version": agent_version,
        "generated_at": "2026-03-02T09:00:00Z",
        "device": {"name": "press-7", "serial": "SN-1", "model": "P7", "customer": "Acme"},
        "collectors": {
            "system": {"status": "ok", "message": "", "duration_ms": 3.1, "data": {"hostname": "press-7"}},
            "versions": versions,
            "network": {"status": "skipped", "message": "disabled", "duration_ms": 0, "data": None},
            "logs": {"status": "ok", "message": "", "duration_ms": 20, "data": {"errors": []}},
        },
    }


def health(status: str = "OK", checks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Return a health payload shaped like ``telemaint check --json``."""
    exit_codes = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
    checks = checks or [
        {
            "name": "disk /",
            "type": "disk",
            "status": status,
            "exit_code": exit_codes[status],
            "message": "disk / 42% used",
            "value": 42,
            "unit": "%",
            "perfdata": "'/'=42%;80;90",
            "duration_ms": 1.2,
        }
    ]
    return {"generated_at": "2026-03-02T09:00:00Z", "status": status, "exit_code": exit_codes[status], "checks": checks}


@dataclass
class EnrolledDevice:
    id: int
    token: str
    serial: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class ServerHelper:
    """Shortcuts for the tests: codes, enrolled devices, users with API tokens."""

    def __init__(self, client: TestClient, clock: FakeClock):
        self.client = client
        self.clock = clock
        self.sessionmaker = client.app.state.sessionmaker  # type: ignore[attr-defined]

    def code(self, customer: str | None = None, ttl_s: float = 3600) -> str:
        with self.sessionmaker() as session:
            code, _row = create_enrollment_code(
                session, now=self.clock(), ttl_s=ttl_s, customer_name=customer, created_by="test"
            )
            session.commit()
        return code

    def enroll_body(self, code: str, serial: str = "SN-1", **overrides: Any) -> dict[str, Any]:
        body = {
            "code": code,
            "name": f"press {serial}",
            "serial": serial,
            "model": "P7",
            "ssh_public_key": ssh_public_key(),
            "agent_version": "0.1.0",
        }
        body.update(overrides)
        return body

    def enroll(self, serial: str = "SN-1", customer: str | None = None) -> EnrolledDevice:
        response = self.client.post("/api/v1/enroll", json=self.enroll_body(self.code(customer), serial))
        assert response.status_code == 201, response.text
        data = response.json()
        return EnrolledDevice(id=data["device_id"], token=data["token"], serial=serial)

    def user(self, name: str, role: str, customer: str | None = None, password: str = PASSWORD) -> User:
        with self.sessionmaker() as session:
            now = self.clock()
            customer_row = get_or_create_customer(session, customer, now) if customer else None
            user = User(
                name=name,
                role=role,
                customer_id=customer_row.id if customer_row else None,
                password_hash=hash_password(password),
                created_at=now,
            )
            session.add(user)
            session.commit()
            return user

    def user_headers(self, name: str, role: str, customer: str | None = None) -> dict[str, str]:
        """Create a user with an API token; return the Authorization header."""
        user = self.user(name, role, customer)
        token = new_token(USER_TOKEN_PREFIX)
        with self.sessionmaker() as session:
            session.add(ApiToken(user_id=user.id, name="test", token_hash=hash_token(token), created_at=self.clock()))
            session.commit()
        return {"Authorization": f"Bearer {token}"}

    def post_reports(self, device: EnrolledDevice, reports: list[dict[str, Any]]) -> Any:
        return self.client.post("/api/v1/agent/reports", json={"reports": reports}, headers=device.headers)


@pytest.fixture
def server(client: TestClient, clock: FakeClock) -> ServerHelper:
    return ServerHelper(client, clock)
