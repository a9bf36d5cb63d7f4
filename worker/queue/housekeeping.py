"""Housekeeping of the database: old final jobs, stopped daemons' rows, empty schedule fires.

All of the SQL that deletes history lives here. Deletes run in chunks, each its own
short transaction, so a purge of a year of jobs never holds the write lock for long
(SQLite has one writer; the daemons keep claiming in between). Files are not touched
here: `worker.ops.housekeeping` removes a job's archived original before its row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, delete, exists, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, aliased

from worker.queue.jobs import utcnow
from worker.queue.models import FINAL_STATUSES, Base, Batch, Job, ScheduleFire, Worker
from worker.queue.outage import translate_outages

# Rows per delete: a few milliseconds of write lock each.
CHUNK = 500


@dataclass(frozen=True)
class ExpiredJob:
    """A final job old enough to go, and where its original was archived (untrusted)."""

    id: int
    pipeline: str
    archived_path: str | None
    # The file version the job ran (`file:` key): what its archived original must still be.
    idempotency_key: str | None = None


def _expired(before: datetime) -> list[ColumnElement[bool]]:
    """Conditions of a job that may go: final, finished before `before`, and not the
    child of a live parent (a waiting file job still gathers its children's results)."""
    parent = aliased(Job)
    live_parent = exists().where(
        parent.id == Job.parent_id, parent.status.not_in(list(FINAL_STATUSES))
    )
    return [
        Job.status.in_(list(FINAL_STATUSES)),
        Job.finished_at < before,
        ~live_parent,
    ]


def _older_fire() -> ColumnElement[bool]:
    # Never the newest fire of a pipeline: start-up catch-up reads it.
    newer = aliased(ScheduleFire)
    return exists().where(
        newer.pipeline == ScheduleFire.pipeline, newer.fire_time > ScheduleFire.fire_time
    )


@translate_outages
class HousekeepingStore:
    """Deletes history from the job table and its neighbours; see the module docstring."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = engine
        self.clock = clock

    # Jobs ------------------------------------------------------------------------
    def expired_jobs(
        self, before: datetime, after_id: int = 0, limit: int = CHUNK
    ) -> list[ExpiredJob]:
        """Up to `limit` jobs that may go (see `_expired`) with ids above `after_id`, by id."""
        stmt = (
            select(Job.id, Job.pipeline, Job.archived_path, Job.idempotency_key)
            .where(Job.id > after_id, *_expired(before))
            .order_by(Job.id)
            .limit(limit)
        )
        with self.db.connect() as conn:
            return [ExpiredJob(*row) for row in conn.execute(stmt)]

    def delete_jobs(self, ids: Sequence[int], before: datetime) -> int:
        """Delete the jobs of `ids` that may still go (a job retried meanwhile stays), and
        the batch records of those that were OpenAI Batch files. Returns how many went."""
        if not ids:
            return 0
        with self.db.begin() as conn:
            gone = list(
                conn.execute(
                    delete(Job).where(Job.id.in_(list(ids)), *_expired(before)).returning(Job.id)
                ).scalars()
            )
            if gone:
                conn.execute(delete(Batch).where(Batch.job_id.in_(gone)))
        return len(gone)

    def count_expired_jobs(self, before: datetime) -> int:
        """How many jobs `delete_jobs` would take now (for a dry run)."""
        with self.db.connect() as conn:
            return conn.execute(select(func.count()).where(*_expired(before))).scalar_one()

    # Workers and fires ---------------------------------------------------------------
    def _stale_workers(
        self, stopped_before: datetime, silent_before: datetime
    ) -> ColumnElement[bool]:
        # A stopped daemon's row, or a daemon silent (crashed, killed) for the whole period.
        return or_(
            and_(Worker.state == "stopped", Worker.heartbeat_at < stopped_before),
            Worker.heartbeat_at < silent_before,
        )

    def count_stale_workers(self, stopped_before: datetime, silent_before: datetime) -> int:
        stmt = select(func.count()).where(self._stale_workers(stopped_before, silent_before))
        with self.db.connect() as conn:
            return conn.execute(stmt).scalar_one()

    def delete_stale_workers(self, stopped_before: datetime, silent_before: datetime) -> int:
        """Delete the rows of daemons stopped before `stopped_before`, or silent since
        before `silent_before`; returns how many."""
        return self._delete_chunked(
            Worker, Worker.id, self._stale_workers(stopped_before, silent_before)
        )

    def _empty_fires(self, before: datetime) -> ColumnElement[bool]:
        return and_(
            ScheduleFire.jobs_enqueued == 0, ScheduleFire.recorded_at < before, _older_fire()
        )

    def count_empty_fires(self, before: datetime) -> int:
        with self.db.connect() as conn:
            return conn.execute(select(func.count()).where(self._empty_fires(before))).scalar_one()

    def delete_empty_fires(self, before: datetime) -> int:
        """Delete fires recorded before `before` that enqueued nothing (never a
        pipeline's newest fire); returns how many."""
        return self._delete_chunked(ScheduleFire, ScheduleFire.id, self._empty_fires(before))

    def _delete_chunked(
        self, table: type[Base], key: InstrumentedAttribute[Any], condition: ColumnElement[bool]
    ) -> int:
        """Delete the rows of `table` matching `condition`, CHUNK rows per transaction."""
        total = 0
        while True:
            chunk = select(key).where(condition).limit(CHUNK).scalar_subquery()
            with self.db.begin() as conn:
                deleted = conn.execute(delete(table).where(key.in_(chunk))).rowcount
            total += deleted
            if deleted < CHUNK:
                return total
