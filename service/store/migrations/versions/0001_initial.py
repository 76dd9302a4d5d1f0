"""The schema as kdserve made it with metadata.create_all before migrations: API keys, teachers,
datasets, jobs and their events, models.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _owned(*columns: sa.Column) -> list:
    """seq (the row order), the public id and the owning tenant, then `columns`."""
    return [sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("id", sa.String(length=40), nullable=False),
            sa.Column("tenant", sa.String(length=100), nullable=False),
            *columns]


def _upload(*columns: sa.Column) -> list:
    """The columns of an uploaded file's row (teachers, datasets), then `columns`."""
    return _owned(sa.Column("name", sa.String(length=255), nullable=False),
                  sa.Column("format", sa.String(length=20), nullable=False),
                  sa.Column("sha256", sa.String(length=64), nullable=False),
                  sa.Column("size_bytes", sa.Integer(), nullable=False),
                  *columns)


def upgrade() -> None:
    _api_keys()
    _teachers()
    _datasets()
    _jobs()
    _job_events()
    _models()


def _api_keys() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant", sa.String(length=100), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])


def _teachers() -> None:
    op.create_table(
        "teachers",
        *_upload(
            sa.Column("input_shape", sa.JSON(), nullable=False),
            sa.Column("input_dtype", sa.String(length=20), nullable=False),
            sa.Column("num_classes", sa.Integer(), nullable=False),
            sa.Column("num_parameters", sa.Integer(), nullable=False),
            sa.Column("outputs", sa.JSON(), nullable=False),
            sa.Column("blob_key", sa.String(length=255), nullable=False),
            sa.Column("created_at", sa.Integer(), nullable=False),
            sa.Column("details", sa.JSON(), nullable=True),
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_teachers_tenant", "teachers", ["tenant"])


def _datasets() -> None:
    op.create_table(
        "datasets",
        *_upload(
            sa.Column("num_rows", sa.Integer(), nullable=False),
            sa.Column("feature_shape", sa.JSON(), nullable=False),
            sa.Column("labeled", sa.Boolean(), nullable=False),
            sa.Column("num_classes", sa.Integer(), nullable=True),
            sa.Column("class_counts", sa.JSON(), nullable=True),
            sa.Column("blob_key", sa.String(length=255), nullable=False),
            sa.Column("created_at", sa.Integer(), nullable=False),
            sa.Column("details", sa.JSON(), nullable=True),
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_datasets_tenant", "datasets", ["tenant"])


def _jobs() -> None:
    op.create_table(
        "jobs",
        *_owned(
            sa.Column("status", sa.String(length=20), nullable=False),
            sa.Column("stage", sa.String(length=20), nullable=True),
            sa.Column("progress", sa.Float(), nullable=False),
            sa.Column("epoch", sa.Integer(), nullable=False),
            sa.Column("teacher_id", sa.String(length=40), nullable=True),
            sa.Column("dataset_id", sa.String(length=40), nullable=False),
            sa.Column("validation_dataset_id", sa.String(length=40), nullable=True),
            sa.Column("spec", sa.JSON(), nullable=False),
            sa.Column("metrics", sa.JSON(), nullable=False),
            sa.Column("model_id", sa.String(length=40), nullable=True),
            sa.Column("error", sa.JSON(), nullable=True),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("cancel_requested", sa.Boolean(), nullable=False),
            sa.Column("idempotency_key", sa.String(length=255), nullable=True),
            sa.Column("request_hash", sa.String(length=64), nullable=True),
            sa.Column("created_at", sa.Integer(), nullable=False),
            sa.Column("started_at", sa.Integer(), nullable=True),
            sa.Column("finished_at", sa.Integer(), nullable=True),
            sa.Column("estimated_finish", sa.Integer(), nullable=True),
            sa.Column("heartbeat_at", sa.Integer(), nullable=True),
            sa.Column("worker", sa.String(length=255), nullable=True),
            sa.Column("dispatched_at", sa.Integer(), nullable=True),
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("tenant", "idempotency_key"),
    )
    for column in ("dataset_id", "status", "teacher_id", "tenant"):
        op.create_index(f"ix_jobs_{column}", "jobs", [column])


def _job_events() -> None:
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("type", sa.String(length=10), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_events_job_id", "job_events", ["job_id"])


def _models() -> None:
    op.create_table(
        "models",
        *_owned(
            sa.Column("name", sa.String(length=255), nullable=False),
            sa.Column("job_id", sa.String(length=40), nullable=False),
            sa.Column("card", sa.JSON(), nullable=False),
            sa.Column("created_at", sa.Integer(), nullable=False),
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("job_id"),
    )
    op.create_index("ix_models_tenant", "models", ["tenant"])


def downgrade() -> None:
    for table in ("models", "job_events", "jobs", "datasets", "teachers", "api_keys"):
        op.drop_table(table)  # their indexes go with them
