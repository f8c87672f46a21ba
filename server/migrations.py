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


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "create the initial schema", _create_initial_schema),)
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
