"""Bounded work: which jobs ran alone (crash attribution), and a ceiling on row texts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

# The database refuses a row text larger than this, whatever max_input_bytes says: a
# backstop so that no program can store texts no daemon will ever read (the daemon
# checks max_input_bytes itself, from the size, before it reads a text).
MAX_INPUT_TEXT_BYTES = 64 * 1024 * 1024
_MESSAGE = f"input_text is larger than {MAX_INPUT_TEXT_BYTES} bytes"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("claimed_alone", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    if op.get_bind().dialect.name == "postgresql":
        # NOT VALID: enforced for new and changed rows without scanning the old ones.
        op.execute(
            "ALTER TABLE jobs ADD CONSTRAINT ck_jobs_input_text_size "
            f"CHECK (octet_length(input_text) <= {MAX_INPUT_TEXT_BYTES}) NOT VALID"
        )
    else:
        for when in ("INSERT", "UPDATE OF input_text"):
            name = "insert" if when == "INSERT" else "update"
            op.execute(
                f"CREATE TRIGGER jobs_input_text_size_{name} BEFORE {when} ON jobs "
                f"WHEN length(CAST(NEW.input_text AS BLOB)) > {MAX_INPUT_TEXT_BYTES} "
                f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE jobs DROP CONSTRAINT IF EXISTS ck_jobs_input_text_size")
    else:
        op.execute("DROP TRIGGER IF EXISTS jobs_input_text_size_insert")
        op.execute("DROP TRIGGER IF EXISTS jobs_input_text_size_update")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("claimed_alone")
