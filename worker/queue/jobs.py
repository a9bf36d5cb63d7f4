"""The job store: the only code that touches job rows.

Every state change of a claimed job is one UPDATE guarded by its lease token, so a
worker that lost its lease can never complete, fail or release the job. No
transaction is held across inference: each method is one short transaction.

Leases are measured on the database's clock on PostgreSQL (`now()` in the SQL), since
the hosts that share it may disagree about the time; on SQLite, one host, the store's
Python clock is the database's.

A job whose lease expired `max_crashes` times (its worker died with it in flight) runs
once more alone ("solo": no other job in the engine) before it is declared `dead`, so
only the job that kills the worker ends dead, never a neighbour that crashed with it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    Select,
    String,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from worker.queue.families import FamilyStore, NewBatch, NewChild
from worker.queue.models import FINAL_STATUSES, Job, JobStatus, Worker
from worker.queue.outage import translate_outages

# Ids per UPDATE of an operator's retry: short write transactions, bounded IN lists.
RETRY_CHUNK = 500


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _lock_key(pipeline: str) -> int:
    """The PostgreSQL advisory lock key that serializes capped claims of `pipeline`."""
    digest = hashlib.sha256(f"edge-worker:max_concurrent:{pipeline}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _claim_order(row: Any) -> tuple[int, bool, int, int]:
    """The claim's ORDER BY in Python: priority, then records by their line across files
    (jobs that are no record first), then age. One big file cannot starve the others."""
    return (-row.priority, row.item_index is not None, row.item_index or 0, row.id)


@dataclass(frozen=True)
class _Solo:
    """Which jobs a claim may take by the crash rule (see `claim`)."""

    max_crashes: int | None
    solo: bool


def offset_clock(seconds: float) -> Callable[[], datetime]:
    """`utcnow` shifted by `seconds` (tests: a host whose clock is wrong); 0 is `utcnow`."""
    if not seconds:
        return utcnow
    shift = timedelta(seconds=seconds)
    return lambda: utcnow() + shift


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
    created_at: datetime | None = None


@dataclass(frozen=True)
class RecoveredJob:
    id: int
    status: str


def _solo(max_crashes: int) -> Any:
    """A queued job that crashed the worker `max_crashes` times: it runs alone next."""
    return Job.crashes >= max_crashes


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
        limits: Mapping[str, int] | None = None,
        max_crashes: int | None = None,
        solo: bool = False,
    ) -> list[ClaimedJob]:
        """Lease up to `limit` ready jobs: highest priority first, then jobs that are not
        records of a file, then records by their line across files (one big file cannot
        starve the others), then the oldest.

        `pipelines` limits the claim to those pipelines; `exclude_pipelines` leaves
        those out (e.g. outside their run window), so jobs of unknown pipelines still
        get claimed and failed with a clear error. `limits` caps, per pipeline, how many
        of its jobs may run at once across every daemon on the database (the pipelines'
        `max_concurrent`). With `max_crashes`, jobs that must run alone are left out, or,
        with `solo`, only one of them is taken (caps do not apply to it).
        """
        if limit <= 0:
            return []
        now = self._db_now()
        token = secrets.token_hex(16)
        excluded = set(exclude_pipelines)
        capped = {
            name: cap
            for name, cap in (limits or {}).items()
            if name not in excluded and (pipelines is None or name in pipelines)
        }
        alone = _Solo(max_crashes, solo)
        if capped and not solo:
            rows = self._claim_capped(
                owner, token, now, limit, lease_seconds, pipelines, excluded, capped, alone
            )
        else:
            rows = self._claim_uncapped(
                owner, token, now, limit, lease_seconds, pipelines, excluded, alone
            )
        rows = sorted(rows, key=_claim_order)
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
                created_at=r.created_at,
            )
            for r in rows
        ]

    def _ready(
        self,
        now: datetime,
        limit: int,
        pipelines: Collection[str] | None,
        excluded: Collection[str],
        alone: _Solo,
    ) -> Select[int, int, int | None]:
        """Queued jobs due at `now`, in claim order, at most `limit`."""
        ready = (
            select(Job.id, Job.priority, Job.item_index)
            .where(Job.status == JobStatus.QUEUED, Job.run_after <= now)
            .order_by(Job.priority.desc(), Job.item_index.asc().nulls_first(), Job.id)
            .limit(1 if alone.solo else limit)
        )
        if alone.max_crashes is not None:
            must_run_alone = _solo(alone.max_crashes)
            ready = ready.where(must_run_alone if alone.solo else ~must_run_alone)
        if pipelines is not None:
            ready = ready.where(Job.pipeline.in_(list(pipelines)))
        if excluded:
            ready = ready.where(Job.pipeline.not_in(list(excluded)))
        return ready

    def _take(self, owner: str, token: str, now: datetime, lease_seconds: float) -> Any:
        """The UPDATE that leases the jobs its WHERE clause chooses (still queued)."""
        return (
            update(Job)
            .where(Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.RUNNING,
                attempts=Job.attempts + 1,
                lease_owner=owner,
                lease_token=token,
                lease_expires_at=self._db_after(lease_seconds),
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
                Job.created_at,
            )
        )

    def _claim_uncapped(
        self,
        owner: str,
        token: str,
        now: datetime,
        limit: int,
        lease_seconds: float,
        pipelines: Collection[str] | None,
        excluded: Collection[str],
        alone: _Solo,
    ) -> list[Any]:
        ready = self._ready(now, limit, pipelines, excluded, alone).with_only_columns(Job.id)
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
        with self.db.begin() as conn:
            return list(conn.execute(self._take(owner, token, now, lease_seconds).where(chosen)))

    def _claim_capped(
        self,
        owner: str,
        token: str,
        now: datetime,
        limit: int,
        lease_seconds: float,
        pipelines: Collection[str] | None,
        excluded: Collection[str],
        capped: Mapping[str, int],
        alone: _Solo,
    ) -> list[Any]:
        """Claim with per-pipeline caps, in one transaction.

        The running jobs of each capped pipeline are counted after taking that
        pipeline's lock (SQLite: BEGIN IMMEDIATE already serializes writers; PostgreSQL:
        a transaction advisory lock per pipeline, taken in name order so two claimers
        cannot deadlock), so two daemons never both see the last free place. Candidates
        are read group by group (the uncapped pipelines, then each capped one up to its
        room; FOR UPDATE SKIP LOCKED cannot be combined with a window function), merged
        in claim order, and the first `limit` are leased.
        """
        with self.db.begin() as conn:
            if self._postgres:
                for name in sorted(capped):
                    conn.execute(select(func.pg_advisory_xact_lock(_lock_key(name))))
            running = dict(
                conn.execute(
                    select(Job.pipeline, func.count())
                    .where(Job.status == JobStatus.RUNNING, Job.pipeline.in_(list(capped)))
                    .group_by(Job.pipeline)
                ).all()
            )
            groups = [self._ready(now, limit, pipelines, {*excluded, *capped}, alone)]
            for name, cap in sorted(capped.items()):
                room = min(limit, cap - running.get(name, 0))
                if room > 0:
                    groups.append(self._ready(now, room, [name], (), alone))
            candidates: list[Any] = []
            for group in groups:
                if self._postgres:
                    group = group.with_for_update(skip_locked=True)
                candidates.extend(conn.execute(group).all())
            chosen = sorted(candidates, key=_claim_order)[:limit]
            if not chosen:
                return []
            ids = [r.id for r in chosen]
            take = self._take(owner, token, now, lease_seconds).where(Job.id.in_(ids))
            return list(conn.execute(take))

    def _guarded(self, job_id: int, token: str, **values: Any) -> bool:
        values.setdefault("updated_at", self._db_now())
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.RUNNING)
            .values(**values)
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def heartbeat(self, job_id: int, token: str, lease_seconds: float) -> bool:
        """Extend the lease; False means the lease is lost and the work must be dropped."""
        return self._guarded(job_id, token, lease_expires_at=self._db_after(lease_seconds))

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
        now = self._db_now()
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
        """Record a failed attempt: back to the queue at `retry_at`, or final (`failed`/`dead`).

        `retry_at` is on the store's clock; on PostgreSQL the same delay is counted from
        the database's clock.
        """
        now = self._db_now()
        if retry_at is not None:
            return self._guarded(
                job_id,
                token,
                status=JobStatus.QUEUED,
                error=error,
                run_after=self._db_after((retry_at - self.clock()).total_seconds()),
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

    def defer(self, job_id: int, token: str, reason: str, seconds: float) -> bool:
        """Put a job back to wait `seconds` (on the database's clock), this attempt not
        counted, with the reason in `error` (e.g. its pipeline is not loaded yet)."""
        return self._guarded(
            job_id,
            token,
            status=JobStatus.QUEUED,
            attempts=Job.attempts - 1,
            error=reason,
            run_after=self._db_after(seconds),
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
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

        Each such attempt counts as a crash. At `max_crashes` the job is queued to run
        alone (`claim(..., solo=True)`); a crash after that, alone, makes it `dead`, so
        an input that kills the worker cannot crash-loop it, and a job that merely ran
        beside it is not blamed.
        """
        now = self._db_now()
        crashes = Job.crashes + 1
        dead = crashes > max_crashes
        times = literal("crashed the worker ", String) + cast(crashes, String)
        stmt = (
            update(Job)
            .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
            .values(
                crashes=crashes,
                status=case((dead, JobStatus.DEAD), else_=JobStatus.QUEUED),
                error=case(
                    (dead, times + literal(" times, the last time running alone", String)),
                    (
                        crashes == max_crashes,
                        times + literal(" times; it runs once more, alone", String),
                    ),
                    else_="lease expired: the worker died or hung; retrying",
                ),
                finished_at=case((dead, now), else_=None),
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
        limit: int | None = 50,
        ids: Sequence[int] | None = None,
    ) -> list[Job]:
        """Newest first (`limit` None: all)."""
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
            .where(Job.status == JobStatus.QUEUED, Job.run_after <= self._db_now())
            .limit(1)
        )
        if exclude_pipelines:
            stmt = stmt.where(Job.pipeline.not_in(list(exclude_pipelines)))
        with self.db.connect() as conn:
            return conn.execute(stmt).first() is not None

    def solo_waiting(self, max_crashes: int, exclude_pipelines: Collection[str] = ()) -> bool:
        """Whether a job that must run alone is queued and due (the claimer drains for it)."""
        stmt = (
            select(Job.id)
            .where(
                Job.status == JobStatus.QUEUED,
                Job.run_after <= self._db_now(),
                _solo(max_crashes),
            )
            .limit(1)
        )
        if exclude_pipelines:
            stmt = stmt.where(Job.pipeline.not_in(list(exclude_pipelines)))
        with self.db.connect() as conn:
            return conn.execute(stmt).first() is not None

    def retry(self, job_id: int, force: bool = False) -> bool:
        """Operator: queue a failed, dead or cancelled job again with fresh attempts.

        With `force`, a succeeded job too. The previous result is cleared.
        """
        return self.retry_many([job_id], force) == [job_id]

    def retry_many(self, job_ids: Collection[int], force: bool = False) -> list[int]:
        """`retry` for many jobs; returns the ids queued again (the others were not final)."""
        statuses = [JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED]
        if force:
            statuses.append(JobStatus.SUCCEEDED)
        queued: list[int] = []
        ids = sorted(set(job_ids))
        for start in range(0, len(ids), RETRY_CHUNK):
            with self.db.begin() as conn:
                queued.extend(
                    conn.execute(
                        self._requeue().where(
                            Job.id.in_(ids[start : start + RETRY_CHUNK]), Job.status.in_(statuses)
                        )
                    ).scalars()
                )
        return sorted(queued)

    def _requeue(self) -> Any:
        now = self.clock()
        return (
            update(Job)
            .values(
                status=JobStatus.QUEUED,
                attempts=0,
                crashes=0,
                run_after=now,
                error=None,
                result_text=None,
                prompt_tokens=None,
                completion_tokens=None,
                finished_at=None,
                updated_at=now,
            )
            .returning(Job.id)
        )

    def set_priority(self, job_id: int, priority: int) -> bool:
        """Change a queued job's priority; False if it is no longer queued."""
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(priority=priority, updated_at=self.clock())
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
    "offset_clock",
    "utcnow",
]
