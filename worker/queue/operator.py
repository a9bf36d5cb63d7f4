"""Reading jobs, and what an operator does to them: retry, cancel, reprioritize."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import func, select, update

from worker.queue.base import StoreBase
from worker.queue.models import Job, JobStatus
from worker.queue.outage import translate_outages

# Ids per UPDATE of an operator's retry: short write transactions, bounded IN lists.
RETRY_CHUNK = 500


@translate_outages
class OperatorStore(StoreBase):
    """Reads and operator actions (mixed into JobStore)."""

    def get(self, job_id: int) -> Job | None:
        found = self._read(select(Job).where(Job.id == job_id))
        return found[0] if found else None

    def get_by_key(self, key: str) -> Job | None:
        found = self._read(select(Job).where(Job.idempotency_key == key))
        return found[0] if found else None

    def succeeded_version(self, pipeline: str, source_path: str, digest: str) -> Job | None:
        """The newest succeeded file job of `pipeline` on `source_path` whose input had
        sha256 `digest` (an earlier drop of the same bytes), or None."""
        stmt = (
            select(Job)
            .where(
                Job.pipeline == pipeline,
                Job.source_path == source_path,
                Job.status == JobStatus.SUCCEEDED,
                Job.idempotency_key.endswith(f":{digest}", autoescape=True),
            )
            .order_by(Job.id.desc())
            .limit(1)
        )
        found = self._read(stmt)
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
                # The archived original is not this job's any more (moved back into the
                # inbox, or gone): retention must never delete what now lies at that path.
                archived_path=None,
                updated_at=now,
            )
            .returning(Job.id)
        )

    def clear_archived_path(self, job_id: int, archived_path: str) -> bool:
        """Forget a job's archived original, if the row still names `archived_path`; done
        before the original is moved back into the inbox, so no row ever names a path
        another job's original may take. False if the row changed meanwhile."""
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.archived_path == archived_path)
            .values(archived_path=None, updated_at=self.clock())
        )
        with self.db.begin() as conn:
            return conn.execute(stmt).rowcount == 1

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
