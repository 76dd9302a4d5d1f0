"""The schema comes from the migrations, on SQLite and on PostgreSQL (a database of its own on the
machine's server): an empty database is upgraded to exactly the models' schema, a second upgrade
does nothing, processes starting together migrate once, and a database made by the old
create_all code is adopted (stamped) instead of failing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from api_tests.harness import REPO
from kdserve.service.store import migrate
from kdserve.service.store.db import ApiKey, Base, Database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kdserve.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture()
def engines():
    made = []
    yield made
    for engine in made:
        engine.dispose()  # PostgreSQL cannot drop a database with connections open


def open_db(url: str, engines: list) -> Database:
    db = Database(url)
    engines.append(db.engine)
    return db


def tables(db: Database) -> set[str]:
    return set(inspect(db.engine).get_table_names())


def test_empty_database_is_upgraded_to_the_models_schema(url, engines):
    db = open_db(url, engines)
    assert db.migrate() == f"upgraded from an empty database to {migrate.head()}"
    assert migrate.current(db.engine) == migrate.head()
    assert tables(db) == set(Base.metadata.tables) | {"alembic_version"}
    with db.engine.connect() as conn:
        assert migrate.schema_diff(conn) == []
    with db.session() as s:  # and it works: defaults, autoincrement
        s.add(ApiKey(id="key_1", tenant="t", key_hash="h" * 64, prefix="kd_"))
    assert db.migrate() == f"already at {migrate.head()}"  # twice: nothing to do
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM api_keys")).scalar() == 1


def test_downgrade_to_base_removes_the_tables(url, engines):
    db = open_db(url, engines)
    db.migrate()
    with db.engine.begin() as conn:
        command.downgrade(migrate.config(conn), "base")
    assert tables(db) == {"alembic_version"}
    assert db.migrate().startswith("upgraded from an empty database")


def test_processes_starting_together_migrate_once(url, engines):
    """An API and its workers start at once: each migrates, one does the work, none fails."""
    dbs = [open_db(url, engines) for _ in range(4)]
    results, errors = [], []

    def run(db: Database) -> None:
        try:
            results.append(db.migrate())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(r.split(" ")[0] for r in results) == ["already", "already", "already", "upgraded"]


def test_database_made_by_create_all_is_adopted(url, engines):
    """A deployment from before migrations: its tables are kept, data and all, and stamped."""
    engine = create_engine(url)
    engines.append(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO api_keys (id, tenant, key_hash, prefix, is_admin, created_at) "
                          "VALUES ('key_1', 't', 'h', 'kd_', false, 0)"))
        conn.execute(text("ALTER TABLE teachers DROP COLUMN details"))  # from before text teachers
    db = open_db(url, engines)
    assert db.migrate() == f"existing schema adopted and stamped at {migrate.head()}"
    assert migrate.current(db.engine) == migrate.head()
    with db.engine.connect() as conn:
        assert migrate.schema_diff(conn) == []  # the missing nullable column was added, as before
        assert conn.execute(text("SELECT id FROM api_keys")).all() == [("key_1",)]
    assert db.migrate() == f"already at {migrate.head()}"


def test_database_of_another_shape_is_refused(url, engines):
    engine = create_engine(url)
    engines.append(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE models (seq INTEGER PRIMARY KEY, id VARCHAR(40) NOT NULL, "
                          "owner VARCHAR(40) NOT NULL)"))
    db = open_db(url, engines)
    with pytest.raises(migrate.SchemaMismatch, match="models"):
        db.migrate()
    assert migrate.current(db.engine) is None  # not stamped


def test_cli_db_upgrade(tmp_path):
    env = dict(os.environ, KDSERVE_DATA_DIR=str(tmp_path), KDSERVE_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}")
    run = [sys.executable, "-m", "kdserve.cli", "db", "upgrade"]
    first = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"upgraded from an empty database to {migrate.head()}"
    second = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert second.stdout.strip() == f"already at {migrate.head()}"
