"""Searches: the searches and search_events tables, and jobs.search_id / jobs.trial for the jobs that
are a search's trials.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "searches",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("teacher_id", sa.String(40), nullable=False),
        sa.Column("dataset_id", sa.String(40), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("trials_started", sa.Integer(), nullable=False),
        sa.Column("advancing_until", sa.Float(), nullable=True),
        sa.Column("advance_again", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Integer(), nullable=True),
        sa.Column("finished_at", sa.Integer(), nullable=True),
    )
    for column in ("tenant", "status", "teacher_id", "dataset_id"):
        op.create_index(f"ix_searches_{column}", "searches", [column])
    op.create_table(
        "search_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("search_id", sa.String(40), sa.ForeignKey("searches.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(10), nullable=False),
        sa.Column("type", sa.String(10), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
    )
    op.create_index("ix_search_events_search_id", "search_events", ["search_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("search_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("trial", sa.JSON(), nullable=True))
    op.create_index("ix_jobs_search_id", "jobs", ["search_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_search_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("trial")
        batch.drop_column("search_id")
    op.drop_table("search_events")
    op.drop_table("searches")
