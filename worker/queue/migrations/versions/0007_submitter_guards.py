"""Submitters cannot forge the daemon's keys, jump the queue, or read other people's jobs.

- `jobs.submitted_by`: who inserted the row (PostgreSQL: `DEFAULT current_user`; a
  submitter role cannot write the column, so the default always applies).
- The daemon's idempotency keys (`file:`, `sweep:`, `child:`) are reserved: a `table`
  job (the only kind a submitter can insert; it cannot write `source`) may not use
  them. A trigger on both backends: a forged key would otherwise squat a file's or a
  child line's job (on-conflict-do-nothing would then drop the daemon's own row).
- PostgreSQL: a role that may not insert `source` (a submitter) may not set a priority
  above 0; row-level security lets a role without table-wide SELECT read only the rows
  it inserted. The table's owner (the daemon, which ran this migration) and superusers
  bypass row security; a role with table-wide SELECT (a dashboard) still reads all.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

# The same words in both backends' messages; tests and README quote them.
RESERVED_MESSAGE = (
    "idempotency_key: the prefixes file:, sweep: and child: are reserved for the daemon's own jobs"
)
PRIORITY_MESSAGE = "priority: a submitter may set 0 or lower; an operator raises it"


def _reserved(new: str) -> str:
    # substr, not LIKE: exact and case-sensitive on both backends.
    return (
        f"{new}.source = 'table' AND {new}.idempotency_key IS NOT NULL AND ("
        f"substr({new}.idempotency_key, 1, 5) = 'file:' OR "
        f"substr({new}.idempotency_key, 1, 6) = 'sweep:' OR "
        f"substr({new}.idempotency_key, 1, 6) = 'child:')"
    )


_PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION edge_worker_guard_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF {_reserved("NEW")} THEN
        RAISE EXCEPTION USING ERRCODE = 'check_violation',
            MESSAGE = '{RESERVED_MESSAGE.replace("'", "''")}';
    END IF;
    IF NEW.priority > 0 AND NOT has_column_privilege(TG_RELID, 'source', 'INSERT') THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = '{PRIORITY_MESSAGE}';
    END IF;
    RETURN NEW;
END;
$$
"""

_PG_TRIGGER = """
CREATE TRIGGER jobs_guard
BEFORE INSERT OR UPDATE OF idempotency_key, source, priority ON jobs
FOR EACH ROW EXECUTE FUNCTION edge_worker_guard_job()
"""

# Permissive policies, OR-ed per command. Privileges still decide who may do what at
# all (a submitter has no UPDATE or DELETE); the policies only decide which rows.
_PG_POLICIES = (
    "CREATE POLICY jobs_read ON jobs FOR SELECT USING ("
    "submitted_by = current_user OR has_table_privilege('jobs'::regclass, 'SELECT'))",
    "CREATE POLICY jobs_insert ON jobs FOR INSERT WITH CHECK ("
    "submitted_by = current_user "
    "OR has_column_privilege('jobs'::regclass, 'submitted_by', 'INSERT'))",
    "CREATE POLICY jobs_update ON jobs FOR UPDATE USING (true) WITH CHECK (true)",
    "CREATE POLICY jobs_delete ON jobs FOR DELETE USING (true)",
)
_POLICY_NAMES = ("jobs_read", "jobs_insert", "jobs_update", "jobs_delete")


def _sqlite_trigger(name: str, when: str) -> str:
    message = RESERVED_MESSAGE.replace("'", "''")
    return (
        f"CREATE TRIGGER {name} BEFORE {when} ON jobs WHEN {_reserved('NEW')} "
        f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
    )


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    default = sa.text("CURRENT_USER") if postgres else None
    op.add_column(
        "jobs", sa.Column("submitted_by", sa.String(200), server_default=default, nullable=True)
    )
    if not postgres:
        op.execute(_sqlite_trigger("jobs_reserved_keys_insert", "INSERT"))
        op.execute(
            _sqlite_trigger("jobs_reserved_keys_update", "UPDATE OF idempotency_key, source")
        )
        return
    op.execute(_PG_FUNCTION)
    op.execute(_PG_TRIGGER)
    op.execute("ALTER TABLE jobs ENABLE ROW LEVEL SECURITY")
    for policy in _PG_POLICIES:
        op.execute(policy)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in _POLICY_NAMES:
            op.execute(f"DROP POLICY IF EXISTS {name} ON jobs")
        op.execute("ALTER TABLE jobs DISABLE ROW LEVEL SECURITY")
        op.execute("DROP TRIGGER IF EXISTS jobs_guard ON jobs")
        op.execute("DROP FUNCTION IF EXISTS edge_worker_guard_job()")
    else:
        op.execute("DROP TRIGGER IF EXISTS jobs_reserved_keys_insert")
        op.execute("DROP TRIGGER IF EXISTS jobs_reserved_keys_update")
        # Not batch mode: a copied table would lose 0006's triggers (the size ceiling).
        op.execute("ALTER TABLE jobs DROP COLUMN submitted_by")
        return
    op.drop_column("jobs", "submitted_by")
