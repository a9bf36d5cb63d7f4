"""PostgreSQL: NOTIFY edge_worker_jobs when a job becomes ready, so idle daemons wake at once.

Any program's `INSERT INTO jobs` (and an UPDATE that puts a job back to `queued`:
a retry, a release at shutdown, a recovered lease, an operator's retry) sends
`pg_notify('edge_worker_jobs', <pipeline>)`. PostgreSQL delivers it at commit and
folds identical notifications of one transaction into one, so a bulk insert of
300 rows sends one per pipeline. SQLite has no such thing: daemons poll it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# The channel name is a contract with worker/sources/pg_notify.py.
CHANNEL = "edge_worker_jobs"

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION edge_worker_notify_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.pipeline);
    RETURN NULL;
END;
$$
"""

# Two triggers: an INSERT trigger's WHEN may not mention OLD.
_INSERT_TRIGGER = """
CREATE TRIGGER jobs_notify_insert
AFTER INSERT ON jobs
FOR EACH ROW WHEN (NEW.status = 'queued')
EXECUTE FUNCTION edge_worker_notify_job()
"""

_REQUEUE_TRIGGER = """
CREATE TRIGGER jobs_notify_requeue
AFTER UPDATE OF status ON jobs
FOR EACH ROW WHEN (NEW.status = 'queued' AND OLD.status IS DISTINCT FROM 'queued')
EXECUTE FUNCTION edge_worker_notify_job()
"""


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgres():
        return
    op.execute(_FUNCTION)
    op.execute(_INSERT_TRIGGER)
    op.execute(_REQUEUE_TRIGGER)


def downgrade() -> None:
    if not _postgres():
        return
    op.execute("DROP TRIGGER IF EXISTS jobs_notify_requeue ON jobs")
    op.execute("DROP TRIGGER IF EXISTS jobs_notify_insert ON jobs")
    op.execute("DROP FUNCTION IF EXISTS edge_worker_notify_job()")
