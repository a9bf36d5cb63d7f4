"""The job store: the only code that touches job rows, assembled from one part per concern.

- `claims.py`: leasing ready jobs (order, caps, the solo rule);
- `outcomes.py`: lease-guarded changes (renew, complete, fail, defer, release) and the
  recovery of expired leases;
- `families.py`: file jobs that fan out into children, and OpenAI Batch records;
- `operator.py`: reads and operator actions (retry, cancel, priority);
- `workers.py`: daemons' registrations and heartbeats.

No transaction is held across inference: each method is one short transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite

from worker.queue.base import offset_clock, utcnow
from worker.queue.claims import ClaimedJob, ClaimStore, Routing
from worker.queue.families import FamilyStore, NewBatch, NewChild
from worker.queue.models import FINAL_STATUSES, Job
from worker.queue.operator import OperatorStore
from worker.queue.outage import translate_outages
from worker.queue.outcomes import OutcomeStore, RecoveredJob
from worker.queue.workers import WorkerStore


@dataclass(frozen=True)
class NewJob:
    """What a source hands to `enqueue`."""

    pipeline: str
    input_text: str | None = None
    source: str = "table"
    source_path: str | None = None
    idempotency_key: str | None = None
    priority: int = 0
    origin: str | None = None  # file and sweep jobs: the instance whose folder holds it


@translate_outages
class JobStore(ClaimStore, OutcomeStore, FamilyStore, OperatorStore, WorkerStore):
    """Job rows in a SQL database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = engine
        self.clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._busy_rounds = {}

    def enqueue(self, job: NewJob) -> int | None:
        """Insert a queued job; returns its id, or None if its idempotency key already exists."""
        values: dict[str, Any] = {
            "pipeline": job.pipeline,
            "input_text": job.input_text,
            "source": job.source,
            "source_path": job.source_path,
            "idempotency_key": job.idempotency_key,
            "priority": job.priority,
            "origin": job.origin,
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


__all__ = [
    "FINAL_STATUSES",
    "ClaimedJob",
    "JobStore",
    "NewBatch",
    "NewChild",
    "NewJob",
    "RecoveredJob",
    "Routing",
    "offset_clock",
    "utcnow",
]
