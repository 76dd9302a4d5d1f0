"""jobs.claimed_at: when a worker last took the job (sub-second), so that the worker's fair choice
of the next job can serve the tenant served longest ago (Database.claim_next); indexed with the
tenant for that look-up.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claimed_at", sa.Float(), nullable=True))
    op.create_index("ix_jobs_tenant_claimed_at", "jobs", ["tenant", "claimed_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_claimed_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("claimed_at")
