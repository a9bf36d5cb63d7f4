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
from worker.queue.models import Job, JobStatus
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
