"""Schema versions: create the schema on ``init`` and upgrade an older database in place.

The rule a later version relies on:

- ``schema_version`` holds one row per applied migration; the highest ``version`` is the
  database's schema version.
- :data:`MIGRATIONS` is an ordered list. Migration 1 creates everything. A later change to
  :mod:`server.models` appends migration N that alters a database at version N-1 (plain DDL
  through the given connection; write it for both SQLite and PostgreSQL) — never edit an
  applied one.
- An empty database is built from the current models in one step and stamped with every
  migration (as Alembic's cookbook does), so only existing databases replay migrations.
  ``tests/server/test_migrations.py`` upgrades a frozen version-1 schema and compares it with a
  fresh one, which fails when a model changed without a migration.
- Each migration runs in its own transaction with its version row; a failure leaves the
  database at the previous version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
    select,
)

import server.models  # noqa: F401  (registers the tables on Base.metadata)
from server.clock import utc_now
from server.db import Base, make_engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """One step of the schema: ``apply`` turns version ``version - 1`` into ``version``."""

    version: int
    description: str
    apply: Callable[[Connection], None]


class SchemaError(Exception):
    """The database schema cannot be used by this code (too old, too new or foreign)."""


_version_metadata = MetaData()
schema_version_table = Table(
    "schema_version",
    _version_metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


def _create_initial_schema(connection: Connection) -> None:
    Base.metadata.create_all(connection)


# Migration 2, written out as DDL so that later model changes cannot alter what it does.
_V2_NEW_TABLES = """
CREATE TABLE user_sessions (
    id {serial} NOT NULL,
    user_id INTEGER NOT NULL,
    token_hash VARCHAR(64) NOT NULL,
    created_at {ts} NOT NULL,
    expires_at {ts} NOT NULL,
    last_seen_at {ts} NOT NULL,
    address VARCHAR(64),
    user_agent VARCHAR(200),
    CONSTRAINT pk_user_sessions PRIMARY KEY (id),
    CONSTRAINT fk_user_sessions_user_id_users FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT uq_user_sessions_token_hash UNIQUE (token_hash)
);
CREATE INDEX ix_user_sessions_user_id ON user_sessions (user_id);
CREATE TABLE login_failures (
    id {bigserial} NOT NULL,
    name VARCHAR(200) NOT NULL,
    address VARCHAR(64) NOT NULL,
    at {ts} NOT NULL,
    CONSTRAINT pk_login_failures PRIMARY KEY (id)
);
CREATE INDEX ix_login_failures_address_at ON login_failures (address, at);
CREATE INDEX ix_login_failures_at ON login_failures (at);
CREATE INDEX ix_login_failures_name_at ON login_failures (name, at);
CREATE TABLE device_usage (
    device_id INTEGER NOT NULL,
    day VARCHAR(10) NOT NULL,
    bytes BIGINT NOT NULL,
    reports INTEGER NOT NULL,
    refused_bytes BIGINT NOT NULL,
    refused_reports INTEGER NOT NULL,
    first_refused_at {ts},
    CONSTRAINT pk_device_usage PRIMARY KEY (device_id, day),
    CONSTRAINT fk_device_usage_device_id_devices FOREIGN KEY(device_id) REFERENCES devices (id) ON DELETE CASCADE
);
ALTER TABLE devices ADD COLUMN claimed_customer VARCHAR(200);
ALTER TABLE enrollment_codes ADD COLUMN for_device_id INTEGER {fk_name}REFERENCES devices (id);
ALTER TABLE users ADD COLUMN disabled_at {ts};
"""

# SQLite cannot drop a table constraint: the reports table is rebuilt.
_V2_SQLITE_REPORTS = """
DROP INDEX ix_reports_device_kind_created;
ALTER TABLE reports RENAME TO reports_v1;
CREATE TABLE reports (
    id INTEGER NOT NULL,
    uuid CHAR(32) NOT NULL,
    device_id INTEGER NOT NULL,
    kind VARCHAR(16) NOT NULL,
    created_at DATETIME NOT NULL,
    received_at DATETIME NOT NULL,
    payload JSON NOT NULL,
    size INTEGER DEFAULT '0' NOT NULL,
    CONSTRAINT pk_reports PRIMARY KEY (id),
    CONSTRAINT uq_reports_device_id_uuid UNIQUE (device_id, uuid),
    CONSTRAINT fk_reports_device_id_devices FOREIGN KEY(device_id) REFERENCES devices (id) ON DELETE CASCADE
);
INSERT INTO reports (id, uuid, device_id, kind, created_at, received_at, payload, size)
    SELECT id, uuid, device_id, kind, MIN(created_at, received_at), received_at, payload, length(payload)
    FROM reports_v1;
DROP TABLE reports_v1;
CREATE INDEX ix_reports_device_kind_created ON reports (device_id, kind, created_at);
"""

_V2_POSTGRESQL_REPORTS = """
ALTER TABLE reports DROP CONSTRAINT uq_reports_uuid;
ALTER TABLE reports ADD CONSTRAINT uq_reports_device_id_uuid UNIQUE (device_id, uuid);
ALTER TABLE reports ADD COLUMN size INTEGER DEFAULT '0' NOT NULL;
UPDATE reports SET size = octet_length(payload::text), created_at = LEAST(created_at, received_at);
"""


def _run_script(connection: Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            connection.exec_driver_sql(statement)


def _identity_and_sessions(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        types = {"serial": "INTEGER", "bigserial": "INTEGER", "ts": "DATETIME", "fk_name": ""}
        reports = _V2_SQLITE_REPORTS
    else:
        types = {
            "serial": "SERIAL",
            "bigserial": "BIGSERIAL",
            "ts": "TIMESTAMP WITH TIME ZONE",
            "fk_name": "CONSTRAINT fk_enrollment_codes_for_device_id_devices ",
        }
        reports = _V2_POSTGRESQL_REPORTS
    _run_script(connection, _V2_NEW_TABLES.format(**types))
    _run_script(connection, reports)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create the initial schema", _create_initial_schema),
    Migration(
        2,
        "report ids unique per device, report sizes, usage budgets, server-side sessions, "
        "login failures, disabled users, device-bound enrollment codes",
        _identity_and_sessions,
    ),
)
LATEST_SCHEMA_VERSION = MIGRATIONS[-1].version


def current_schema_version(connection: Connection) -> int:
    """Return the schema version of the database, 0 when it has none yet."""
    if not inspect(connection).has_table("schema_version"):
        return 0
    versions = connection.execute(select(schema_version_table.c.version)).scalars().all()
    return max(versions, default=0)


def _check_order(migrations: Sequence[Migration]) -> None:
    numbers = [m.version for m in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise SchemaError(f"migrations must be numbered 1, 2, 3, ...; got {numbers}")


def _record(connection: Connection, migration: Migration) -> None:
    connection.execute(
        schema_version_table.insert().values(
            version=migration.version, description=migration.description, applied_at=utc_now()
        )
    )


def upgrade_schema(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Bring the database to the newest version; return the migration numbers applied.

    Raises SchemaError when the database is newer than this code or has tables but no
    ``schema_version`` (not ours).
    """
    _check_order(migrations)
    if engine.dialect.name == "sqlite":
        ddl_engine = make_engine(engine.url, transactional_ddl=True)
        try:
            return _upgrade(ddl_engine, migrations)
        finally:
            ddl_engine.dispose()
    return _upgrade(engine, migrations)


def _upgrade(engine: Engine, migrations: Sequence[Migration]) -> list[int]:
    latest = migrations[-1].version if migrations else 0
    with engine.begin() as connection:
        version = current_schema_version(connection)
        if version > latest:
            raise SchemaError(
                f"the database is at schema version {version}, newer than this server "
                f"({latest}); upgrade telemaint-server"
            )
        if version == 0:
            foreign = set(inspect(connection).get_table_names()) - {"schema_version"}
            if foreign:
                raise SchemaError(
                    "the database has tables but no telemaint schema version: " + ", ".join(sorted(foreign)[:5])
                )
            if not migrations:
                return []
            _version_metadata.create_all(connection)
            Base.metadata.create_all(connection)
            for migration in migrations:
                _record(connection, migration)
            log.info("created schema version %d", latest)
            return [m.version for m in migrations]
    applied = []
    for migration in migrations:
        if migration.version <= version:
            continue
        with engine.begin() as connection:
            log.info("applying migration %d: %s", migration.version, migration.description)
            migration.apply(connection)
            _record(connection, migration)
        applied.append(migration.version)
    return applied


def require_current_schema(engine: Engine, latest: int = LATEST_SCHEMA_VERSION) -> None:
    """Return when the database is at ``latest``; raise SchemaError saying what to do."""
    with engine.connect() as connection:
        version = current_schema_version(connection)
    if version == latest:
        return
    if version == 0:
        raise SchemaError("the database has no schema; run `telemaint-server init`")
    if version < latest:
        raise SchemaError(
            f"the database is at schema version {version}, this server needs {latest}; "
            "run `telemaint-server init` to upgrade it"
        )
    raise SchemaError(f"the database is at schema version {version}, newer than this server ({latest})")
