"""The owner of a file job's input as it was read: `jobs.input_owner`.

With outputs_per_submitter a file's outputs go to its owner's folder. A file that turns
into records is gathered long after it was read; by then its name may be gone, or hold
another user's file. The uid read from the open file is recorded when the job expands.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Nullable, no default: other programs' INSERTs are unchanged, and a parent expanded
    # before this revision falls back to the owner of the file in the inbox.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("input_owner", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # In place, not batch mode: a copied table would lose the triggers of 0006/0007.
        op.execute("ALTER TABLE jobs DROP COLUMN input_owner")
    else:
        op.drop_column("jobs", "input_owner")
