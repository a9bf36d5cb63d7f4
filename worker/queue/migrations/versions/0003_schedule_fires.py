"""Schedule fires and the jobs each fire enqueued.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.queue.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "schedule_fires",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("fire_time", UTCDateTime(), nullable=False),
        sa.Column("catch_up", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("jobs_enqueued", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.UniqueConstraint("pipeline", "fire_time", name="uq_schedule_fires_pipeline_fire_time"),
    )
    op.create_table(
        "schedule_fire_jobs",
        sa.Column(
            "fire_id",
            sa.Integer(),
            sa.ForeignKey("schedule_fires.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("job_id", sa.Integer(), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("schedule_fire_jobs")
    op.drop_table("schedule_fires")
