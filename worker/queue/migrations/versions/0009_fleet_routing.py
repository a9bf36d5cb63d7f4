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


# What upgrade added. SQLite drops a column in place only if no index, constraint,
# trigger or view uses it: none uses these.
_ADDED = (
    ("workers", "models_json"),
    ("workers", "pipelines_json"),
    ("workers", "instance"),
    ("jobs", "model"),
    ("jobs", "origin"),
)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, column in _ADDED:
        if sqlite:
            # Not batch mode: it copies the table, and the copy would lose the triggers
            # of 0006 (the size ceiling) and 0007 (the reserved keys). SQLite >= 3.35
            # drops a column in place.
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        else:
            op.drop_column(table, column)
