"""Read-only views of the job table for `edge-worker status` and the metrics.

Nothing here changes a row (worker/queue/jobs.py owns every state change); each
function is one short read, so it is safe to run every few seconds against a
busy shared database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.queue.jobs import JobStore
from worker.queue.models import FINAL_STATUSES, Job, JobStatus

THROUGHPUT_WINDOW = timedelta(seconds=60)


@dataclass(frozen=True)
class RunningJob:
    """A job some daemon holds a lease on."""

    id: int
    pipeline: str
    owner: str | None
    attempts: int
    started_at: datetime | None


# The one definition of tokens/s, shared by `edge-worker status` and the
# `edge_worker_tokens_per_second` gauge (README, "Metrics").
TOKENS_PER_SECOND_HELP = (
    f"Generated tokens per second of wall-clock time: the completion tokens of the jobs "
    f"that succeeded in the last {THROUGHPUT_WINDOW.total_seconds():.0f} s, divided by "
    f"{THROUGHPUT_WINDOW.total_seconds():.0f} s (0 when none)"
)


@dataclass(frozen=True)
class Throughput:
    """Jobs that succeeded within `window` before `now`, and the tokens they generated."""

    window_seconds: float
    jobs: int
    completion_tokens: int

    @property
    def jobs_per_minute(self) -> float:
        return self.jobs * 60.0 / self.window_seconds

    @property
    def tokens_per_second(self) -> float:
        """See TOKENS_PER_SECOND_HELP: tokens over the whole window, not over job time, so
        slots running side by side add up and idle seconds count."""
        return self.completion_tokens / self.window_seconds


def running_jobs(store: JobStore, owner: str | None = None) -> list[RunningJob]:
    """Running jobs, oldest claim first; only those leased by `owner` when given."""
    stmt = (
        select(Job.id, Job.pipeline, Job.lease_owner, Job.attempts, Job.started_at)
        .where(Job.status == JobStatus.RUNNING)
        .order_by(Job.started_at, Job.id)
    )
    if owner is not None:
        stmt = stmt.where(Job.lease_owner == owner)
    with store.db.connect() as conn:
        return [RunningJob(*row) for row in conn.execute(stmt)]


def throughput(store: JobStore, now: datetime, window: timedelta = THROUGHPUT_WINDOW) -> Throughput:
    """What succeeded in the `window` before `now` (by `finished_at`), across all daemons."""
    stmt = select(func.count(), func.coalesce(func.sum(Job.completion_tokens), 0)).where(
        Job.status == JobStatus.SUCCEEDED, Job.finished_at >= now - window
    )
    with store.db.connect() as conn:
        jobs, tokens = conn.execute(stmt).one()
    return Throughput(window.total_seconds(), int(jobs), int(tokens or 0))


def finished_jobs(
    store: JobStore,
    since: datetime,
    pipeline: str | None = None,
    after_id: int = 0,
    limit: int = 500,
) -> list[Job]:
    """Up to `limit` final jobs that finished at or after `since`, with ids above
    `after_id`, by id (page through with the last id: a read never holds many rows)."""
    stmt = (
        select(Job)
        .where(Job.status.in_(list(FINAL_STATUSES)), Job.finished_at >= since, Job.id > after_id)
        .order_by(Job.id)
        .limit(limit)
    )
    if pipeline is not None:
        stmt = stmt.where(Job.pipeline == pipeline)
    with Session(store.db, expire_on_commit=False) as session:
        return list(session.scalars(stmt).all())


def queue_depth(counts: dict[tuple[str, str], int]) -> int:
    """Queued jobs in all pipelines, from `JobStore.counts()`."""
    return sum(n for (_pipeline, status), n in counts.items() if status == JobStatus.QUEUED)
