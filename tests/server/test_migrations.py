"""Schema versions: init creates and stamps, an old database upgrades in place, bad ones are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, inspect, text

from server.db import make_engine
from server.migrations import (
    LATEST_SCHEMA_VERSION,
    MIGRATIONS,
    Migration,
    SchemaError,
    current_schema_version,
    require_current_schema,
    upgrade_schema,
)

SCHEMA_DIR = Path(__file__).parent / "schema"


@pytest.fixture
def bare_engine(db_url: str) -> Any:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _version(engine: Engine) -> int:
    with engine.connect() as connection:
        return current_schema_version(connection)


def _load_version_1(engine: Engine) -> None:
    ddl = (SCHEMA_DIR / f"v1-{engine.dialect.name}.sql").read_text()
    ddl = "\n".join(line for line in ddl.splitlines() if not line.startswith("--"))
    statements = [s.strip() for s in ddl.split(";") if s.strip()]
    with engine.begin() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
        connection.execute(
            text("INSERT INTO schema_version (version, description, applied_at) VALUES (1, 'v1', :at)"),
            {"at": "2026-01-01 00:00:00+00:00"},
        )


def _describe(engine: Engine) -> dict[str, Any]:
    inspector = inspect(engine)
    schema: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        schema[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            "pk": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
            ),
            "unique": sorted((tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)),
            "fks": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]), str(f["options"]))
                for f in inspector.get_foreign_keys(table)
            ),
        }
    return schema


def _drop_everything(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in inspect(connection).get_table_names():
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql(f'DROP TABLE "{table}" CASCADE')
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            for table in inspect(connection).get_table_names():
                connection.exec_driver_sql(f'DROP TABLE "{table}"')


def test_init_creates_the_schema_once(bare_engine: Engine) -> None:
    assert _version(bare_engine) == 0
    with pytest.raises(SchemaError, match="run `telemaint-server init`"):
        require_current_schema(bare_engine)
    assert upgrade_schema(bare_engine) == [m.version for m in MIGRATIONS]
    assert _version(bare_engine) == LATEST_SCHEMA_VERSION
    assert upgrade_schema(bare_engine) == []
    require_current_schema(bare_engine)
    assert {"devices", "reports", "audit_log", "schema_version"} <= set(inspect(bare_engine).get_table_names())


def test_a_version_1_database_upgrades_to_the_current_schema(bare_engine: Engine) -> None:
    """Fails when a model changed without a migration that brings old databases along."""
    _load_version_1(bare_engine)
    upgrade_schema(bare_engine)
    assert _version(bare_engine) == LATEST_SCHEMA_VERSION
    upgraded = _describe(bare_engine)
    _drop_everything(bare_engine)
    upgrade_schema(bare_engine)
    assert upgraded == _describe(bare_engine)


def _add_customer_note(connection: Connection) -> None:
    connection.exec_driver_sql("ALTER TABLE customers ADD COLUMN note VARCHAR(200)")


def _half_done(connection: Connection) -> None:
    connection.exec_driver_sql("CREATE TABLE half_done (id INTEGER PRIMARY KEY)")
    raise RuntimeError("migration bug")


def test_pending_migration_is_applied_and_recorded(bare_engine: Engine) -> None:
    upgrade_schema(bare_engine)
    with bare_engine.begin() as connection:
        connection.execute(text("INSERT INTO customers (name, created_at) VALUES ('Acme', '2026-01-01 00:00:00')"))
    newer = (*MIGRATIONS, Migration(LATEST_SCHEMA_VERSION + 1, "customer notes", _add_customer_note))
    assert upgrade_schema(bare_engine, newer) == [LATEST_SCHEMA_VERSION + 1]
    assert _version(bare_engine) == LATEST_SCHEMA_VERSION + 1
    assert "note" in {c["name"] for c in inspect(bare_engine).get_columns("customers")}
    with bare_engine.connect() as connection:
        assert connection.execute(text("SELECT name FROM customers")).scalars().all() == ["Acme"]
    with pytest.raises(SchemaError, match="newer than this server"):
        require_current_schema(bare_engine)


def test_failing_migration_leaves_the_previous_version(bare_engine: Engine) -> None:
    upgrade_schema(bare_engine)
    broken = (*MIGRATIONS, Migration(LATEST_SCHEMA_VERSION + 1, "broken", _half_done))
    with pytest.raises(RuntimeError, match="migration bug"):
        upgrade_schema(bare_engine, broken)
    assert _version(bare_engine) == LATEST_SCHEMA_VERSION
    assert "half_done" not in inspect(bare_engine).get_table_names()  # the DDL rolled back too


def test_database_newer_than_the_code_is_refused(bare_engine: Engine) -> None:
    upgrade_schema(bare_engine)
    with bare_engine.begin() as connection:
        connection.execute(
            text("INSERT INTO schema_version (version, description, applied_at) VALUES (99, 'future', :at)"),
            {"at": "2026-01-01 00:00:00+00:00"},
        )
    with pytest.raises(SchemaError, match="newer than this server"):
        upgrade_schema(bare_engine)


def test_foreign_database_is_refused(bare_engine: Engine) -> None:
    with bare_engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    with pytest.raises(SchemaError, match="no telemaint schema version: invoices"):
        upgrade_schema(bare_engine)
    assert "schema_version" not in inspect(bare_engine).get_table_names()


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
