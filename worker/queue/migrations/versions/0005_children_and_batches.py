"""Child jobs (lines and rows of a file job) and OpenAI Batch files.

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.queue.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Nullable columns without defaults: `INSERT INTO jobs (pipeline, input_text)` still works.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("item_index", sa.Integer(), nullable=True))
    op.create_index("ix_jobs_parent", "jobs", ["parent_id", "status"])

    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("input_name", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("errors_json", sa.Text(), nullable=True),
        sa.Column("request_total", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("request_completed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("request_failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("output_file", sa.Text(), nullable=True),
        sa.Column("error_file", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("in_progress_at", UTCDateTime(), nullable=True),
        sa.Column("finalizing_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("failed_at", UTCDateTime(), nullable=True),
        sa.Column("cancelling_at", UTCDateTime(), nullable=True),
        sa.Column("cancelled_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("job_id"),
    )


def downgrade() -> None:
    op.drop_table("batches")
    op.drop_index("ix_jobs_parent", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("item_index")
        batch.drop_column("parent_id")
