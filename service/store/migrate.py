"""Schema migrations, run from code: the API, the worker and `kdserve db upgrade` all call
upgrade() before they touch the database, so a fresh SQLite file or PostgreSQL database gets its
tables from the migrations in migrations/versions/, and an older one is brought to the newest.

Safe when several processes start at once (an API and its workers, often): on PostgreSQL the
whole upgrade runs in one transaction under an advisory lock (DDL is transactional there), on a
SQLite file under an exclusive lock on a file beside it. The second process waits, then finds
the database at head and does nothing.

Databases made before migrations existed (metadata.create_all) have tables but no
alembic_version: they are brought to the models the way that code did it (missing tables made,
missing nullable columns added), compared with the models, and stamped at head when they match;
a database that does not match is refused with the differences rather than guessed at.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from kdserve.service.store.tables import Base

SCRIPTS = Path(__file__).with_name("migrations")
PG_LOCK_KEY = 0x6B647376  # "kdsv": the advisory lock every kdserve process takes to migrate


class SchemaMismatch(RuntimeError):
    """An existing database whose tables differ from what kdserve expects."""


def config(connection: Connection | None = None) -> Config:
    """An alembic Config without alembic.ini; migrations/env.py migrates `connection`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    return ScriptDirectory.from_config(config()).get_current_head()


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_diff(conn: Connection) -> list:
    """alembic's differences between the database and the models in db.py (empty: they match)."""
    return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def upgrade(engine: Engine) -> str:
    """Bring the database to the newest revision; says what it did."""
    with _locked(engine) as conn:
        rev, newest = MigrationContext.configure(conn).get_current_revision(), head()
        if rev is None and _has_our_tables(conn):
            _adopt(conn)
            command.stamp(config(conn), "head")
            return f"existing schema adopted and stamped at {newest}"
        if rev == newest:
            return f"already at {newest}"
        command.upgrade(config(conn), "head")
        return f"upgraded from {rev or 'an empty database'} to {newest}"


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other kdserve process migrates alongside."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})  # freed at commit
            yield conn
        return
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or engine.url.query.get("mode") == "memory":
        with engine.begin() as conn:
            yield conn
        return
    import fcntl

    with open(f"{os.path.abspath(database)}.migrate-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with engine.begin() as conn:
            yield conn


def _has_our_tables(conn: Connection) -> bool:
    return bool(set(inspect(conn).get_table_names()) & set(Base.metadata.tables))


def _adopt(conn: Connection) -> None:
    Base.metadata.create_all(conn)
    _add_missing_columns(conn)
    diff = schema_diff(conn)
    if diff:
        lines = "\n".join(f"  {d}" for d in diff[:20])
        raise SchemaMismatch(f"the database has kdserve's tables but not their expected shape, so it is not "
                             f"migrated automatically; differences from the models:\n{lines}")


def _add_missing_columns(conn: Connection) -> None:
    """What kdserve did before migrations, for the databases it made then: a nullable column that a
    table lacks is added (create_all only creates missing tables)."""
    inspector = inspect(conn)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
