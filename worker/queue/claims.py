"""Claiming ready jobs under a lease: the order, the per-pipeline caps and the solo rule.

A job that was in flight when its worker died (a crash counted) is a suspect: it runs
alone ("solo": no other job in the engine). If it crashes the worker again while alone,
it is the cause and `dead` (`outcomes.crash_outcome`); a neighbour that merely crashed
with it succeeds alone and is never blamed. The claim records who holds the job and
whether it runs alone, before the job reaches the engine.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, LargeBinary, Select, and_, cast, func, or_, select, update
from sqlalchemy.dialects import postgresql

from worker.logs import event
from worker.queue.base import StoreBase
from worker.queue.models import Job, JobStatus, PipelineClaimLock
from worker.queue.outage import translate_outages

# A capped pipeline whose claim lock was busy this many claim rounds in a row is logged
# (once, until a claim gets it again): a claimer holding it for so long is stuck.
BUSY_ROUNDS_WARNING = 100


def _claim_order(row: Any) -> tuple[int, bool, int, int]:
    """The claim's ORDER BY in Python: priority, then records by their line across files
    (jobs that are no record first), then age. One big file cannot starve the others."""
    return (-row.priority, row.item_index is not None, row.item_index or 0, row.id)


@dataclass(frozen=True)
class _Solo:
    """Which jobs a claim may take by the crash rule (see `claim`)."""

    max_crashes: int | None
    solo: bool
    routing: Routing | None = None  # carried along to every read of candidates


@dataclass(frozen=True)
class Routing:
    """Which jobs a daemon can run (issue #19, fleet routing): file jobs of its own
    instance (or of none), and with `model`, only the jobs that need that model: its own
    (`jobs.model`) or, without one, their pipeline's (one of `model_pipelines`)."""

    origin: str | None = None
    model: str | None = None
    model_pipelines: tuple[str, ...] = ()

    def where(self) -> Any:
        """The condition on `jobs` rows."""
        conditions = [or_(Job.origin.is_(None), Job.origin == self.origin)]
        if self.model is not None:
            conditions.append(
                or_(
                    Job.model == self.model,
                    and_(Job.model.is_(None), Job.pipeline.in_(list(self.model_pipelines))),
                )
            )
        return and_(*conditions)


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds a lease on. `lease_token` guards every later change."""

    id: int
    pipeline: str
    source: str
    source_path: str | None
    idempotency_key: str | None
    attempts: int
    lease_token: str
    parent_id: int | None = None
    item_index: int | None = None
    created_at: datetime | None = None
    # Bytes of `input_text` (None: no text). The claim reads sizes, never the texts:
    # several huge rows must not be loaded at once; the runner reads one job's text.
    input_bytes: int | None = None
    model: str | None = None  # the model it needs, when not its pipeline's


def _solo(max_crashes: int) -> Any:
    """A queued job that crashed the worker `max_crashes` times (the daemon: once): it
    runs alone next."""
    return Job.crashes >= max_crashes


@translate_outages
class ClaimStore(StoreBase):
    """Leasing ready jobs (mixed into JobStore)."""

    # Per capped pipeline: claim rounds in a row that found its claim lock taken.
    _busy_rounds: dict[str, int]

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
        routing: Routing | None = None,
    ) -> list[ClaimedJob]:
        """Lease up to `limit` ready jobs: highest priority first, then jobs that are not
        records of a file, then records by their line across files (one big file cannot
        starve the others), then the oldest.

        `pipelines` limits the claim to those pipelines; `exclude_pipelines` leaves
        those out (e.g. outside their run window), so jobs of unknown pipelines still
        get claimed and failed with a clear error. `limits` caps, per pipeline, how many
        of its jobs may run at once across every daemon on the database (the pipelines'
        `max_concurrent`). With `max_crashes`, jobs that must run alone are left out, or,
        with `solo`, only one of them is taken (caps do not apply to it). `routing`
        leaves out what this daemon cannot run (another instance's files, other models).
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
        alone = _Solo(max_crashes, solo, routing)
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
                source=r.source,
                source_path=r.source_path,
                idempotency_key=r.idempotency_key,
                attempts=r.attempts,
                lease_token=token,
                parent_id=r.parent_id,
                item_index=r.item_index,
                created_at=r.created_at,
                input_bytes=r.input_bytes,
                model=r.model,
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
        if alone.routing is not None:
            ready = ready.where(alone.routing.where())
        return ready

    def _take(
        self, owner: str, token: str, now: datetime, lease_seconds: float, alone: bool = False
    ) -> Any:
        """The UPDATE that leases the jobs its WHERE clause chooses (still queued). The
        holder (`lease_owner`) and whether the job runs alone are recorded before the job
        reaches the engine: a crash is attributed from them after a restart."""
        return (
            update(Job)
            .where(Job.status == JobStatus.QUEUED)
            .values(
                claimed_alone=alone,
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
                Job.source,
                Job.source_path,
                Job.idempotency_key,
                Job.attempts,
                Job.priority,
                Job.parent_id,
                Job.item_index,
                Job.created_at,
                self._text_bytes().label("input_bytes"),
                Job.model,
            )
        )

    def _text_bytes(self) -> Any:
        """The size of `input_text` in bytes, computed by the database."""
        if self._postgres:
            return func.octet_length(Job.input_text)
        return func.length(cast(Job.input_text, LargeBinary))

    def claimed_input(self, job_id: int) -> str | None:
        """The `input_text` of one job (the runner reads it after checking its size)."""
        value: str | None = self._job_value(Job.input_text, job_id)
        return value

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
            take = self._take(owner, token, now, lease_seconds, alone.solo)
            return list(conn.execute(take.where(chosen)))

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
        its row in `pipeline_claim_locks`, see `_lock_capped`), so two daemons never
        both see the last free place. Candidates
        are read group by group (the uncapped pipelines, then each capped one up to its
        room; FOR UPDATE SKIP LOCKED cannot be combined with a window function), merged
        in claim order, and the first `limit` are leased.
        """
        with self.db.begin() as conn:
            if self._postgres:
                busy = self._lock_capped(conn, capped)
                excluded = {*excluded, *busy}
                capped = {name: cap for name, cap in capped.items() if name not in busy}
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

    def _lock_capped(self, conn: Connection, capped: Collection[str]) -> set[str]:
        """PostgreSQL: lock the claim rows of the `capped` pipelines for this transaction;
        returns the pipelines whose row another transaction holds (skipped this round).

        A row lock, not an advisory lock: any role that can connect may take any advisory
        key and hold it forever (a capped pipeline would never be claimed again), while
        `pipeline_claim_locks` is the daemon's own table (no other role has privileges on
        it; locking a row needs UPDATE). SKIP LOCKED: try, never wait. Missing rows are
        inserted first (a conflict with a committed row neither waits nor writes).
        """
        names = sorted(capped)
        conn.execute(
            postgresql.insert(PipelineClaimLock)
            .values([{"pipeline": name} for name in names])
            .on_conflict_do_nothing(index_elements=["pipeline"])
        )
        got = set(
            conn.execute(
                select(PipelineClaimLock.pipeline)
                .where(PipelineClaimLock.pipeline.in_(names))
                .order_by(PipelineClaimLock.pipeline)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        busy = set(names) - got
        self._count_busy_rounds(names, busy)
        return busy

    def _count_busy_rounds(self, names: Collection[str], busy: Collection[str]) -> None:
        """Log a pipeline whose claim lock has been taken for `BUSY_ROUNDS_WARNING` rounds
        in a row, once until a claim gets it again."""
        rounds = self._busy_rounds
        for name in names:
            if name not in busy:
                rounds.pop(name, None)
                continue
            rounds[name] = rounds.get(name, 0) + 1
            if rounds[name] == BUSY_ROUNDS_WARNING:
                event(
                    "claim.pipeline_lock_busy",
                    logging.WARNING,
                    pipeline=name,
                    rounds=rounds[name],
                )

    def has_ready(
        self,
        exclude_pipelines: Collection[str] = (),
        pipelines: Collection[str] | None = None,
        routing: Routing | None = None,
    ) -> bool:
        """Whether any job is queued and due now (leaving out `exclude_pipelines`; only
        `pipelines` and what `routing` allows, if given)."""
        stmt = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, Job.run_after <= self._db_now())
            .limit(1)
        )
        if exclude_pipelines:
            stmt = stmt.where(Job.pipeline.not_in(list(exclude_pipelines)))
        if pipelines is not None:
            stmt = stmt.where(Job.pipeline.in_(list(pipelines)))
        if routing is not None:
            stmt = stmt.where(routing.where())
        with self.db.connect() as conn:
            return conn.execute(stmt).first() is not None

    def solo_waiting(
        self,
        max_crashes: int,
        exclude_pipelines: Collection[str] = (),
        pipelines: Collection[str] | None = None,
        routing: Routing | None = None,
    ) -> bool:
        """Whether a job that must run alone is queued and due (the claimer drains for it);
        only one of `pipelines` that `routing` allows, if given."""
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
        if pipelines is not None:
            stmt = stmt.where(Job.pipeline.in_(list(pipelines)))
        if routing is not None:
            stmt = stmt.where(routing.where())
        with self.db.connect() as conn:
            return conn.execute(stmt).first() is not None
