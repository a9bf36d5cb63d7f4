"""Lease-guarded changes of a claimed job: renew, complete, fail, defer, release; and the
recovery of jobs whose lease expired.

Every state change of a claimed job is one UPDATE guarded by its lease token, so a
worker that lost its lease can never complete, fail or release the job.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, case, cast, literal, select, update

from worker.queue.base import StoreBase
from worker.queue.models import Job, JobStatus, Worker
from worker.queue.outage import translate_outages


@dataclass(frozen=True)
class RecoveredJob:
    id: int
    status: str


@translate_outages
class OutcomeStore(StoreBase):
    """What a lease holder may do to its job (mixed into JobStore)."""

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

    def recover_expired(self, stale_after: float) -> list[RecoveredJob]:
        """Requeue jobs whose lease expired and whose worker is gone: no heartbeat in its
        `workers` row for `stale_after` seconds (or no row, or stopped). A worker that is
        alive keeps its jobs even past their lease (a database outage stopped it from
        renewing them): the job's outcome may be on its way, and running it again would
        publish it twice.

        Each such attempt counts as a crash (`crash_outcome`): the job runs alone next,
        and a job that crashed its worker while alone is `dead`.
        """
        now = self._db_now()
        alive = (
            select(Worker.id)
            .where(
                Worker.id == Job.lease_owner,
                Worker.state == "running",
                Worker.heartbeat_at > self._db_after(-stale_after),
            )
            .exists()
        )
        where = (Job.status == JobStatus.RUNNING, Job.lease_expires_at < now, ~alive)
        return self._crashed(where, now)

    def requeue_suspects(self, owner: str) -> list[RecoveredJob]:
        """At start-up after an unclean exit: the jobs the previous process (`owner`) held
        crashed with it. They go back at once, as crashes (`crash_outcome`), without
        waiting for their leases to expire; the worker's row is marked `crashed`."""
        now = self._db_now()
        where = (Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
        recovered = self._crashed(where, now)
        with self.db.begin() as conn:
            conn.execute(
                update(Worker)
                .where(Worker.id == owner, Worker.state == "running")
                .values(state="crashed", heartbeat_at=now)
            )
        return recovered

    def _crashed(self, where: tuple[Any, ...], now: Any) -> list[RecoveredJob]:
        values = crash_outcome(now)
        stmt = update(Job).where(*where).values(**values).returning(Job.id, Job.status)
        with self.db.begin() as conn:
            return [RecoveredJob(r.id, r.status) for r in conn.execute(stmt)]


def crash_outcome(now: Any) -> dict[str, Any]:
    """What a crash does to the job it caught (SQL expressions over the row).

    A job that was running alone is the cause: `dead`. One that ran beside others is a
    suspect: queued with a crash counted, and the claim runs a job with a crash alone,
    so a poison input is isolated at its first crash and dead at its second, and a
    neighbour is never blamed.
    """
    crashes = Job.crashes + 1
    dead = Job.claimed_alone
    count = cast(crashes, String)
    return {
        "crashes": crashes,
        "status": case((dead, JobStatus.DEAD), else_=JobStatus.QUEUED),
        "error": case(
            (
                dead,
                literal("crashed the worker while running alone (crash ", String)
                + count
                + literal("): this input is the cause", String),
            ),
            else_=literal("the worker died with this job in flight (crash ", String)
            + count
            + literal("); it runs alone next, to find the cause", String),
        ),
        "finished_at": case((dead, now), else_=None),
        "lease_owner": None,
        "lease_token": None,
        "lease_expires_at": None,
        "updated_at": now,
    }
