"""The job store: the only code that touches job rows.

Every state change of a claimed job is one UPDATE guarded by its lease token, so a
worker that lost its lease can never complete, fail or release the job. No
transaction is held across inference: each method is one short transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, String, case, cast, delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.queue.families import FamilyStore, NewBatch, NewChild
from worker.queue.models import FINAL_STATUSES, Job, JobStatus, Worker
from worker.queue.outage import translate_outages


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class NewJob:
    """What a source hands to `enqueue`."""

    pipeline: str
    input_text: str | None = None
    source: str = "table"
    source_path: str | None = None
    idempotency_key: str | None = None
    priority: int = 0


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds a lease on. `lease_token` guards every later change."""

    id: int
    pipeline: str
    input_text: str | None
    source: str
    source_path: str | None
    idempotency_key: str | None
    attempts: int
    lease_token: str
    parent_id: int | None = None
    item_index: int | None = None


@dataclass(frozen=True)
class RecoveredJob:
    id: int
    status: str


@translate_outages
class JobStore(FamilyStore):
    """Job rows in a SQL database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = engine
        self.clock = clock
        self._postgres = engine.dialect.name == "postgresql"

    # Sources ---------------------------------------------------------------
    def enqueue(self, job: NewJob) -> int | None:
        """Insert a queued job; returns its id, or None if its idempotency key already exists."""
        values: dict[str, Any] = {
            "pipeline": job.pipeline,
            "input_text": job.input_text,
            "source": job.source,
            "source_path": job.source_path,
            "idempotency_key": job.idempotency_key,
            "priority": job.priority,
        }
        dialect_insert = postgresql.insert if self._postgres else sqlite.insert
        stmt = (
            dialect_insert(Job)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(Job.id)
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).scalar_one_or_none()

    # Runner ----------------------------------------------------------------
    def claim(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        pipelines: Collection[str] | None = None,
        exclude_pipelines: Collection[str] = (),
    ) -> list[ClaimedJob]:
        """Lease up to `limit` ready jobs, highest priority first, oldest first.

        `pipelines` limits the claim to those pipelines; `exclude_pipelines` leaves
        those out (e.g. outside their run window), so jobs of unknown pipelines still
        get claimed and failed with a clear error.
        """
        if limit <= 0:
            return []
        now = self.clock()
        token = secrets.token_hex(16)
        ready = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, Job.run_after <= now)
            .order_by(Job.priority.desc(), Job.item_index.asc().nulls_first(), Job.id)
            .limit(limit)
        )
        if pipelines is not None:
            ready = ready.where(Job.pipeline.in_(list(pipelines)))
        if exclude_pipelines:
            ready = ready.where(Job.pipeline.not_in(list(exclude_pipelines)))
        if self._postgres:
            # A materialized CTE runs once. As `id IN (subquery)` PostgreSQL may run the
            # SKIP LOCKED subquery again for each candidate row and claim far more than
            # `limit` rows (seen: 298 rows for limit 1 with three claimers).
            locked = (
                ready.with_for_update(skip_locked=True).cte("ready").prefix_with("MATERIALIZED")
            )
            chosen = Job.id == locked.c.id
        else:
            chosen = Job.id.in_(ready.scalar_subquery())
        stmt = (
            update(Job)
            .where(chosen, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.RUNNING,
                attempts=Job.attempts + 1,
                lease_owner=owner,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                started_at=now,
                updated_at=now,
                error=None,
            )
            .returning(
                Job.id,
                Job.pipeline,
                Job.input_text,
                Job.source,
                Job.source_path,
                Job.idempotency_key,
                Job.attempts,
                Job.priority,
                Job.parent_id,
                Job.item_index,
            )
        )
        with self.db.begin() as conn:
            rows = conn.execute(stmt).all()
        rows = sorted(rows, key=lambda r: (-r.priority, r.id))
        return [
            ClaimedJob(
                id=r.id,
                pipeline=r.pipeline,
                input_text=r.input_text,
                source=r.source,
                source_path=r.source_path,
                idempotency_key=r.idempotency_key,
                attempts=r.attempts,
                lease_token=token,
                parent_id=r.parent_id,
                item_index=r.item_index,
            )
            for r in rows
        ]

    def _guarded(self, job_id: int, token: str, **values: Any) -> bool:
        values.setdefault("updated_at", self.clock())
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.RUNNING)
            .values(**values)
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def heartbeat(self, job_id: int, token: str, lease_seconds: float) -> bool:
        """Extend the lease; False means the lease is lost and the work must be dropped."""
        until = self.clock() + timedelta(seconds=lease_seconds)
        return self._guarded(job_id, token, lease_expires_at=until)

    def complete(
        self,
        job_id: int,
        token: str,
        result_text: str,
        prompt_tokens: int,
        completion_tokens: int,
        output_path: str | None = None,
    ) -> bool:
        """Mark succeeded with its result; False if the lease was lost."""
        now = self.clock()
        return self._guarded(
            job_id,
            token,
            status=JobStatus.SUCCEEDED,
            result_text=result_text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            output_path=output_path,
            error=None,
            lease_token=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )

    def fail(
        self, job_id: int, token: str, error: str, retry_at: datetime | None, dead: bool = False
    ) -> bool:
        """Record a failed attempt: back to the queue at `retry_at`, or final (`failed`/`dead`)."""
        now = self.clock()
        if retry_at is not None:
            return self._guarded(
                job_id,
                token,
                status=JobStatus.QUEUED,
                error=error,
                run_after=retry_at,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
        return self._guarded(
            job_id,
            token,
            status=JobStatus.DEAD if dead else JobStatus.FAILED,
            error=error,
            lease_token=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )

    def release(self, job_id: int, token: str) -> bool:
        """Give a job back unfinished (shutdown): queued again, this attempt not counted."""
        return self._guarded(
            job_id,
            token,
            status=JobStatus.QUEUED,
            attempts=Job.attempts - 1,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )

    def live_leases(self, tokens: Collection[str]) -> set[str]:
        """The lease tokens, of `tokens`, whose job is still running under them."""
        if not tokens:
            return set()
        stmt = select(Job.lease_token).where(
            Job.lease_token.in_(list(tokens)), Job.status == JobStatus.RUNNING
        )
        with self.db.connect() as conn:
            return {row[0] for row in conn.execute(stmt) if row[0] is not None}

    def set_archived_path(self, job_id: int, archived_path: str) -> None:
        """Remember where a file job's original was moved (done/ or failed/)."""
        with self.db.begin() as conn:
            conn.execute(update(Job).where(Job.id == job_id).values(archived_path=archived_path))

    def recover_expired(self, max_crashes: int) -> list[RecoveredJob]:
        """Requeue jobs whose lease expired (their worker died or hung).

        Each such attempt counts as a crash; after `max_crashes` the job is `dead`,
        so an input that kills the worker cannot crash-loop it.
        """
        now = self.clock()
        crashes = Job.crashes + 1
        stmt = (
            update(Job)
            .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
            .values(
                crashes=crashes,
                status=case((crashes >= max_crashes, JobStatus.DEAD), else_=JobStatus.QUEUED),
                error=case(
                    (
                        crashes >= max_crashes,
                        literal("crashed the worker ", String)
                        + cast(crashes, String)
                        + literal(" times", String),
                    ),
                    else_="lease expired: the worker died or hung; retrying",
                ),
                finished_at=case((crashes >= max_crashes, now), else_=None),
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
                updated_at=now,
            )
            .returning(Job.id, Job.status)
        )
        with self.db.begin() as conn:
            return [RecoveredJob(r.id, r.status) for r in conn.execute(stmt)]

    # Reading and operator actions --------------------------------------------
    def _read(self, stmt: Any) -> list[Any]:
        # Detached ORM objects: attributes stay readable after the session is closed.
        with Session(self.db, expire_on_commit=False) as session:
            return list(session.scalars(stmt).all())

    def get(self, job_id: int) -> Job | None:
        found = self._read(select(Job).where(Job.id == job_id))
        return found[0] if found else None

    def get_by_key(self, key: str) -> Job | None:
        found = self._read(select(Job).where(Job.idempotency_key == key))
        return found[0] if found else None

    def list_jobs(
        self,
        status: str | None = None,
        pipeline: str | None = None,
        limit: int = 50,
        ids: Sequence[int] | None = None,
    ) -> list[Job]:
        """Newest first."""
        stmt = select(Job).order_by(Job.id.desc()).limit(limit)
        if status:
            stmt = stmt.where(Job.status == status)
        if pipeline:
            stmt = stmt.where(Job.pipeline == pipeline)
        if ids is not None:
            stmt = stmt.where(Job.id.in_(list(ids)))
        return self._read(stmt)

    def counts(self) -> dict[tuple[str, str], int]:
        """Number of jobs by (pipeline, status)."""
        stmt = select(Job.pipeline, Job.status, func.count()).group_by(Job.pipeline, Job.status)
        with self.db.connect() as conn:
            return {(p, s): n for p, s, n in conn.execute(stmt)}

    def has_ready(self, exclude_pipelines: Collection[str] = ()) -> bool:
        """Whether any job is queued and due now (leaving out `exclude_pipelines`)."""
        stmt = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, Job.run_after <= self.clock())
            .limit(1)
        )
        if exclude_pipelines:
            stmt = stmt.where(Job.pipeline.not_in(list(exclude_pipelines)))
        with self.db.connect() as conn:
            return conn.execute(stmt).first() is not None

    def retry(self, job_id: int) -> bool:
        """Operator: queue a failed, dead or cancelled job again with fresh attempts."""
        now = self.clock()
        stmt = (
            update(Job)
            .where(
                Job.id == job_id,
                Job.status.in_([JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED]),
            )
            .values(
                status=JobStatus.QUEUED,
                attempts=0,
                crashes=0,
                run_after=now,
                error=None,
                finished_at=None,
                updated_at=now,
            )
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def cancel(self, job_id: int) -> bool:
        """Operator: cancel a queued, running or waiting job (a running one loses its lease).

        A waiting parent's live children are cancelled with it.
        """
        now = self.clock()
        values = dict(
            status=JobStatus.CANCELLED,
            error="cancelled by operator",
            lease_token=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
        stmt = update(Job).where(
            Job.id == job_id,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING]),
        )
        children = update(Job).where(
            Job.parent_id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
        )
        with self.db.begin() as conn:
            if conn.execute(stmt.values(**values)).rowcount != 1:
                return False
            conn.execute(children.values(**values))
            return True

    # Workers -------------------------------------------------------------------
    def register_worker(self, worker_id: str, host: str, pid: int, model: str, slots: int) -> None:
        now = self.clock()
        with self.db.begin() as conn:
            conn.execute(delete(Worker).where(Worker.id == worker_id))
            conn.execute(
                insert(Worker).values(
                    id=worker_id,
                    host=host,
                    pid=pid,
                    model=model,
                    slots=slots,
                    state="running",
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    def worker_heartbeat(self, worker_id: str, state: str = "running") -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(Worker)
                .where(Worker.id == worker_id)
                .values(heartbeat_at=self.clock(), state=state)
            )

    def list_workers(self) -> list[Worker]:
        return self._read(select(Worker).order_by(Worker.heartbeat_at.desc()))


__all__ = [
    "FINAL_STATUSES",
    "ClaimedJob",
    "JobStore",
    "NewBatch",
    "NewChild",
    "NewJob",
    "RecoveredJob",
    "utcnow",
]
