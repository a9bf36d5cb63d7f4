"""A fixed clock for stores under test, and leases that ended."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from worker.queue.jobs import JobStore
from worker.queue.models import Job, JobStatus


def frozen(at: datetime) -> Callable[[], datetime]:
    """A clock that always says `at`."""
    return lambda: at


def expire_leases(store: JobStore) -> int:
    """End every running job's lease an hour ago, as if its worker died; how many.

    Works on every database: on PostgreSQL leases are on the database's clock, which a
    store's Python clock cannot move.
    """
    past = datetime.now(UTC) - timedelta(hours=1)
    stmt = update(Job).where(Job.status == JobStatus.RUNNING).values(lease_expires_at=past)
    with store.db.begin() as conn:
        return int(conn.execute(stmt).rowcount)
