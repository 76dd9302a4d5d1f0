"""Alembic's entry point: migrate the connection that kdserve.service.store.migrate hands over (it holds
the lock that keeps an API and a worker starting together from migrating twice)."""

from __future__ import annotations

from alembic import context

from kdserve.service.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("run migrations through kdserve.service.store.migrate (kdserve db upgrade), not the alembic CLI")

# render_as_batch: SQLite cannot ALTER most things; batch mode rebuilds the table instead
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
with context.begin_transaction():
    context.run_migrations()
