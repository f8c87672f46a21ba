"""Database engine and ORM base: SQLite (WAL, busy timeout) by default, PostgreSQL by URL."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    URL,
    Connection,
    DateTime,
    Engine,
    MetaData,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from server.clock import as_utc

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
POSTGRES_CONNECT_TIMEOUT_S = 10

# Deterministic constraint names, so that a later migration can drop or alter them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as an aware UTC datetime.

    SQLite keeps no time zone; PostgreSQL stores ``timestamp with time zone``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    """Declarative base of every table in :mod:`server.models`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_driver_autocommit(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None


def _sqlite_begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def compact_json(value: Any) -> str:
    """Return ``value`` as the JSON text stored in JSON columns: compact, UTF-8 (no ``\\uXXXX``
    escapes, which take up to 12 bytes for a 4-byte character), so that a report's stored size is
    the size its device's budget is charged. Text that UTF-8 cannot hold (a lone surrogate) is
    stored escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))
    return text


def make_engine(url: str | URL, *, transactional_ddl: bool = False, **kwargs: Any) -> Engine:
    """Return an engine for ``url``; SQLite connections get WAL, a busy timeout and FKs on.

    ``transactional_ddl`` makes every SQLite transaction an explicit ``BEGIN IMMEDIATE`` so
    that DDL rolls back with it (used for migrations; pysqlite otherwise runs DDL outside
    any transaction). PostgreSQL's DDL is transactional anyway.
    """
    parsed = make_url(url)
    kwargs.setdefault("json_serializer", compact_json)
    if parsed.get_backend_name() == "sqlite":
        connect_args = {"check_same_thread": False}
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _on_sqlite_connect)
        if transactional_ddl:
            event.listen(engine, "connect", _sqlite_driver_autocommit)
            event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    if parsed.get_backend_name() == "postgresql":
        connect_args = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args, **kwargs)
    return create_engine(parsed, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Return the session factory used per request; objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def display_url(url: str | URL) -> str:
    """Return ``url`` with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"
