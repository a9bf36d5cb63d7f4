"""Reads of file jobs for the inbox watcher: which file versions already have a live job
(after a restart, so the first scan need not read every waiting file again), and how
the jobs of remembered versions are doing (in chunks, never one query per file)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, select

from worker.queue.models import Job, JobStatus
from worker.queue.outage import translate_outages

LIVE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING)
CHUNK = 500  # ids per IN list


@dataclass(frozen=True)
class FileJob:
    """A file job: its id, `<pipeline>/<name>`, idempotency key and status."""

    id: int
    source_path: str
    key: str
    status: str


@translate_outages
class FileJobReads:
    """Read-only queries on file jobs (one short transaction each)."""

    def __init__(self, engine: Engine) -> None:
        self.db = engine

    def live(self, pipelines: Collection[str]) -> list[FileJob]:
        """The live (queued, running, waiting) file jobs of `pipelines`: the jobs with a
        `file:` key (a prefix only the daemon may use, migration 0006)."""
        if not pipelines:
            return []
        stmt = select(Job.id, Job.source_path, Job.idempotency_key, Job.status).where(
            Job.status.in_(list(LIVE)),
            Job.pipeline.in_(sorted(pipelines)),
            Job.idempotency_key.startswith("file:", autoescape=True),
            Job.source_path.is_not(None),
        )
        with self.db.connect() as conn:
            return [
                FileJob(row.id, str(row.source_path), str(row.idempotency_key), row.status)
                for row in conn.execute(stmt)
            ]

    def statuses(self, ids: Sequence[int]) -> dict[int, str]:
        """The status of each job of `ids` that still exists, CHUNK ids per query."""
        found: dict[int, str] = {}
        unique = sorted(set(ids))
        for start in range(0, len(unique), CHUNK):
            stmt = select(Job.id, Job.status).where(Job.id.in_(unique[start : start + CHUNK]))
            with self.db.connect() as conn:
                found.update({row.id: row.status for row in conn.execute(stmt)})
        return found
