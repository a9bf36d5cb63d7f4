"""Fleet routing: the instance (data folder) a file job belongs to, the model a job needs
when it is not its pipeline's, and what each daemon serves.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Nullable, no defaults: `INSERT INTO jobs (pipeline, input_text)` still works, and a
    # row without an origin may run on any daemon that serves its pipeline.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("origin", sa.String(64), nullable=True))
        batch.add_column(sa.Column("model", sa.String(200), nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("instance", sa.String(64), nullable=True))
        batch.add_column(sa.Column("pipelines_json", sa.Text(), nullable=True))
        batch.add_column(sa.Column("models_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("models_json")
        batch.drop_column("pipelines_json")
        batch.drop_column("instance")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("model")
        batch.drop_column("origin")
