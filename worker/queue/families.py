"""Job store, part two: file jobs that fan out into child jobs, and OpenAI Batch records.

A file job whose input has many records (a CSV, JSON Lines, an OpenAI Batch file) is
expanded in short transactions, so no write lock is held for long: the children are
inserted in chunks, held (status `waiting`, never claimed), each chunk guarded by the
parent's lease token; a last transaction releases them (`queued`, or `failed` for a bad
record) and turns the parent from `running` to `waiting`. A crash between chunks leaves
held children only: the parent's lease expires, it runs again, `has_children` is still
False, and the expansion is redone; children already there are kept (their idempotency
keys are `child:<parent>:<line>`, inserted with on-conflict-do-nothing), so each exists
exactly once. When the last child is final, `wake_parent` queues the parent again; it
then gathers the children's results into one output, written atomically, so every line
appears exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, exists, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from worker.queue.base import StoreBase
from worker.queue.models import Batch, Job, JobStatus
from worker.queue.outage import translate_outages

LIVE_CHILD = (JobStatus.QUEUED, JobStatus.RUNNING)
# Children per insert transaction: a few milliseconds of write lock each on SQLite.
EXPAND_CHUNK_ROWS = 500
# A child inserted but not yet released: its parent is still being expanded.
HELD = JobStatus.WAITING


@dataclass(frozen=True)
class NewChild:
    """One line or row of a parent file job. With `error`, it is created already failed."""

    index: int
    input_text: str
    error: str | None = None
    model: str | None = None  # the model it needs, when not its pipeline's (batch lines)


@dataclass(frozen=True)
class NewBatch:
    """The record of an OpenAI Batch file, created with its child jobs."""

    id: str
    input_name: str
    endpoint: str
    errors_json: str | None
    total: int


class _LeaseLost(Exception):
    pass


def _held_child(
    parent_id: int, pipeline: str, source: str, child: NewChild, now: datetime
) -> dict[str, Any]:
    return {
        "pipeline": pipeline,
        "input_text": child.input_text,
        "source": source,
        "parent_id": parent_id,
        "item_index": child.index,
        "idempotency_key": f"child:{parent_id}:{child.index}",
        "status": HELD,
        "error": child.error,
        "run_after": now,
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
        "model": child.model,
    }


def _check_lease(conn: Connection, job_id: int, token: str) -> None:
    # Locks the parent row (PostgreSQL) so the lease cannot be lost mid-transaction.
    stmt = select(Job.id).where(
        Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.RUNNING
    )
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    if conn.execute(stmt).first() is None:
        raise _LeaseLost


def _release_children(conn: Connection, parent_id: int, now: datetime) -> None:
    bad = Job.error.is_not(None)
    conn.execute(
        update(Job)
        .where(Job.parent_id == parent_id, Job.status == HELD)
        .values(
            status=case((bad, JobStatus.FAILED), else_=JobStatus.QUEUED),
            finished_at=case((bad, literal(now, Job.finished_at.type)), else_=None),
            run_after=now,
            updated_at=now,
        )
    )


@translate_outages
class FamilyStore(StoreBase):
    """Parent and child jobs, and batches. Mixed into JobStore (same database and clock)."""

    def expand(
        self,
        job_id: int,
        token: str,
        pipeline: str,
        source: str,
        children: Sequence[NewChild],
        batch: NewBatch | None = None,
        chunk_rows: int = EXPAND_CHUNK_ROWS,
        owner: int | None = None,
    ) -> bool:
        """Turn a running file job into a waiting parent with `children`; False if lease lost.

        Children go in `chunk_rows` at a time (short transactions), held until the last
        transaction releases them and moves the parent to `waiting`. `owner`: the uid
        owning the input as it was read, kept for the gather (`input_owner`).
        """
        now = self._db_time()
        try:
            for start in range(0, len(children), chunk_rows):
                rows = [
                    _held_child(job_id, pipeline, source, child, now)
                    for child in children[start : start + chunk_rows]
                ]
                with self.db.begin() as conn:
                    _check_lease(conn, job_id, token)
                    conn.execute(self._insert_children(), rows)
            with self.db.begin() as conn:
                _check_lease(conn, job_id, token)
                _release_children(conn, job_id, now)
                if batch is not None:
                    conn.execute(
                        insert(Batch).values(
                            id=batch.id,
                            job_id=job_id,
                            input_name=batch.input_name,
                            endpoint=batch.endpoint,
                            status="in_progress",
                            errors_json=batch.errors_json,
                            request_total=batch.total,
                            created_at=now,
                            in_progress_at=now,
                        )
                    )
                conn.execute(
                    update(Job)
                    .where(
                        Job.id == job_id, Job.lease_token == token, Job.status == JobStatus.RUNNING
                    )
                    .values(
                        status=JobStatus.WAITING,
                        lease_owner=None,
                        lease_token=None,
                        lease_expires_at=None,
                        input_owner=owner,
                        updated_at=now,
                    )
                )
        except _LeaseLost:
            return False
        return True

    def _insert_children(self) -> Any:
        # A child left by an expansion that crashed part-way is kept, not inserted twice.
        dialect_insert = (
            postgresql.insert if self.db.dialect.name == "postgresql" else sqlite.insert
        )
        return dialect_insert(Job).on_conflict_do_nothing(index_elements=["idempotency_key"])

    def input_owner(self, job_id: int) -> int | None:
        """The uid owning a file job's input when it was read (recorded at `expand`)."""
        owner: int | None = self._job_value(Job.input_owner, job_id)
        return owner

    def has_children(self, job_id: int) -> bool:
        """Whether this job was expanded (its children exist and were released; held
        children of an expansion that did not finish do not count)."""
        stmt = select(Job.id).where(Job.parent_id == job_id, Job.status != HELD).limit(1)
        with self.db.connect() as conn:
            return conn.execute(stmt).first() is not None

    def children(self, parent_id: int) -> list[Job]:
        """The child jobs of a parent, in input order."""
        stmt = select(Job).where(Job.parent_id == parent_id).order_by(Job.item_index)
        with Session(self.db, expire_on_commit=False) as session:
            return list(session.scalars(stmt).all())

    def child_counts(self, parent_id: int) -> dict[str, int]:
        """Number of children by status."""
        stmt = (
            select(Job.status, func.count()).where(Job.parent_id == parent_id).group_by(Job.status)
        )
        with self.db.connect() as conn:
            return {status: n for status, n in conn.execute(stmt)}

    def _wake(self, *where: Any) -> list[int]:
        now = self._db_now()
        child = aliased(Job)
        live = exists().where(child.parent_id == Job.id, child.status.in_(LIVE_CHILD))
        stmt = (
            update(Job)
            # Only parents: a held child (also `waiting`) waits for its expansion instead.
            .where(Job.status == JobStatus.WAITING, Job.parent_id.is_(None), ~live, *where)
            .values(status=JobStatus.QUEUED, run_after=now, updated_at=now)
            .returning(Job.id)
        )
        with self.db.begin() as conn:
            return [row.id for row in conn.execute(stmt)]

    def wake_parent(self, parent_id: int) -> bool:
        """Queue a waiting parent again if none of its children is queued or running."""
        return bool(self._wake(Job.id == parent_id))

    def wake_waiting(self) -> list[int]:
        """`wake_parent` for every waiting parent (the sweep; covers a crash in between)."""
        return self._wake()

    def cancel_children(self, parent_id: int, error: str, keep: int | None = None) -> int:
        """Cancel a parent's queued and running children (running ones lose their lease),
        all but `keep` (a child that ends itself, e.g. the one that found its batch expired)."""
        now = self.clock()
        stmt = (
            update(Job)
            .where(Job.parent_id == parent_id, Job.status.in_(LIVE_CHILD), Job.id != (keep or 0))
            .values(
                status=JobStatus.CANCELLED,
                error=error,
                lease_token=None,
                lease_expires_at=None,
                finished_at=now,
                updated_at=now,
            )
        )
        with self.db.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    # Batches -------------------------------------------------------------------
    def get_batch(self, batch_id: str) -> Batch | None:
        with Session(self.db, expire_on_commit=False) as session:
            return session.get(Batch, batch_id)

    def batch_of_job(self, job_id: int) -> Batch | None:
        with Session(self.db, expire_on_commit=False) as session:
            return session.scalars(select(Batch).where(Batch.job_id == job_id)).first()

    def list_batches(self, limit: int = 50) -> list[Batch]:
        """Newest first."""
        stmt = select(Batch).order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)
        with Session(self.db, expire_on_commit=False) as session:
            return list(session.scalars(stmt).all())

    def add_failed_batch(self, job_id: int, batch: NewBatch) -> None:
        """Record a batch that failed at `validating` (none of its lines runs); a second
        call for the same job (a retry of the same file) marks the record failed again."""
        now = self._db_time()
        values = dict(
            job_id=job_id,
            input_name=batch.input_name,
            endpoint=batch.endpoint,
            status="failed",
            errors_json=batch.errors_json,
            request_total=batch.total,
            created_at=now,
            failed_at=now,
        )
        with self.db.begin() as conn:
            found = conn.execute(select(Batch.id).where(Batch.id == batch.id)).first()
            if found is None:
                conn.execute(insert(Batch).values(id=batch.id, **values))
            else:
                conn.execute(update(Batch).where(Batch.id == batch.id).values(**values))

    def update_batch(
        self, batch_id: str, only_if_status: Sequence[str] = (), **values: Any
    ) -> bool:
        """Set columns of a batch (optionally only while it has one of `only_if_status`)."""
        stmt = update(Batch).where(Batch.id == batch_id).values(**values)
        if only_if_status:
            stmt = stmt.where(Batch.status.in_(list(only_if_status)))
        with self.db.begin() as conn:
            return int(conn.execute(stmt).rowcount) == 1
