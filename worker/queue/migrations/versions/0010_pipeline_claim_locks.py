"""The claim lock of capped pipelines: table `pipeline_claim_locks` (PostgreSQL claims
lock its rows; it replaced an advisory lock that any role could hold forever).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "pipeline_claim_locks",
        sa.Column("pipeline", sa.String(200), primary_key=True),
    )
    if op.get_bind().dialect.name == "postgresql":
        # The daemon's table (it owns it: it ran this migration). Nothing for PUBLIC,
        # whatever default privileges the schema has: a role that could lock a row here
        # could stop its pipeline's claims.
        op.execute("REVOKE ALL ON TABLE pipeline_claim_locks FROM PUBLIC")


def downgrade() -> None:
    op.drop_table("pipeline_claim_locks")
