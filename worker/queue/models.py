"""SQLAlchemy 2.0 models. The schema itself is created only by Alembic migrations.

The `jobs` table is a public interface: `INSERT INTO jobs (pipeline, input_text)`
is enough, so every other column has a server-side default.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class JobStatus(StrEnum):
    """Where a job is. `queued`, `running` and `waiting` are live; the rest are final."""

    QUEUED = "queued"
    RUNNING = "running"
    # A file job that fanned out into child jobs (one per line or row) and waits for them;
    # it is queued again to gather their results when the last one is final.
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


class JobKind(StrEnum):
    """What a job is, stored in `jobs.source`; `worker.run.kinds` has one handler for each."""

    TABLE = "table"  # a row another program inserted: `input_text` is the input
    FILE = "file"  # a file in the watch folder: `source_path` is `<pipeline>/<name>`
    SWEEP = "sweep"  # a file a schedule's sweep found: `source_path` is its absolute path
    ITEM = "item"  # one record (line or row) of a file job
    BATCH = "batch"  # one request line of an OpenAI Batch file


STATUSES = tuple(JobStatus)
FINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED)


class Job(Base):
    """One unit of work: a file, a table row or a batch line, and its result."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(String(200))
    input_text: Mapped[str | None] = mapped_column(Text)
    # What the job is (`JobKind`): 'table' by default, for another program's INSERT.
    source: Mapped[str] = mapped_column(String(20), server_default=text("'table'"))
    # For file jobs: '<pipeline>/<name>' relative to the inbox root.
    source_path: Mapped[str | None] = mapped_column(Text)
    # Makes enqueue idempotent: a second enqueue with the same key is a no-op.
    idempotency_key: Mapped[str | None] = mapped_column(String(500), unique=True)
    status: Mapped[str] = mapped_column(String(20), server_default=text("'queued'"))
    priority: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Attempts that ended with the process dying; counted when the lease is recovered.
    crashes: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Whether the current (or last) attempt was claimed to run alone: a crash then is
    # this job's own doing, with no neighbour to share the blame.
    claimed_alone: Mapped[bool] = mapped_column(Boolean, server_default=false())
    run_after: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result_text: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    output_path: Mapped[str | None] = mapped_column(Text)
    archived_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Child jobs: the file job they came from, and their 1-based line in it.
    parent_id: Mapped[int | None] = mapped_column(Integer)
    item_index: Mapped[int | None] = mapped_column(Integer)
    # Who inserted the row: on PostgreSQL the database role (`DEFAULT current_user`,
    # which a submitter role cannot override); row-level security shows a submitter
    # its own rows only (both from migration 0007). NULL on SQLite.
    submitted_by: Mapped[str | None] = mapped_column(String(200))
    # A file job that expanded: the uid owning its input as it was read (its outputs go
    # to that owner's folder with outputs_per_submitter). NULL: not recorded. BigInteger:
    # uids go up to 2**32 - 2.
    input_owner: Mapped[int | None] = mapped_column(BigInteger)
    # File and sweep jobs: the instance (data folder, `<data_dir>/instance-id`) that saw
    # the file; only a daemon of that instance claims them. NULL: any daemon.
    origin: Mapped[str | None] = mapped_column(String(64))
    # The model-table name the job needs when it is not its pipeline's model (an OpenAI
    # Batch line naming another model). NULL: the pipeline's model.
    model: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_jobs_claim", "status", "priority", "run_after"),
        Index("ix_jobs_lease", "status", "lease_expires_at"),
        Index("ix_jobs_pipeline_status", "pipeline", "status"),
        Index("ix_jobs_parent", "parent_id", "status"),
    )


class Batch(Base):
    """An OpenAI Batch file: its parent job, endpoint, life-cycle times and final counts."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, unique=True)
    input_name: Mapped[str] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(String(100))
    # validating, in_progress, finalizing, completed, cancelling, cancelled, failed
    status: Mapped[str] = mapped_column(String(20))
    errors_json: Mapped[str | None] = mapped_column(Text)
    request_total: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    request_completed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    request_failed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    output_file: Mapped[str | None] = mapped_column(Text)
    error_file: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    in_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finalizing_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Worker(Base):
    """A daemon that is or was running: its heartbeat, host, models, slots, and what it
    serves (pipelines with their models, as JSON) for the fleet's routing."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(255))
    slots: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), server_default=text("'running'"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    instance: Mapped[str | None] = mapped_column(String(64))
    # {"pipeline": "model", ...}: the pipelines this daemon claims jobs of.
    pipelines_json: Mapped[str | None] = mapped_column(Text)
    # [{"name", "kind", "state", "estimate", "measured", "loads", ...}]: its models now.
    models_json: Mapped[str | None] = mapped_column(Text)


class ScheduleFire(Base):
    """One fire of a pipeline's schedule, recorded by the daemon that acted on it.

    The unique (pipeline, fire_time) is what lets daemons share a database: each
    tries to insert the fire, and only the one whose insert succeeds enqueues.
    """

    __tablename__ = "schedule_fires"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(String(200))
    fire_time: Mapped[datetime] = mapped_column(UTCDateTime)
    # True for the one fire made at start-up for fires missed while no daemon ran.
    catch_up: Mapped[bool] = mapped_column(Boolean, server_default=false())
    worker: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    jobs_enqueued: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    __table_args__ = (
        UniqueConstraint("pipeline", "fire_time", name="uq_schedule_fires_pipeline_fire_time"),
    )


class ScheduleFireJob(Base):
    """A job enqueued by a fire. A link table, so the `jobs` table stays as it is."""

    __tablename__ = "schedule_fire_jobs"

    fire_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("schedule_fires.id", ondelete="CASCADE"), primary_key=True
    )
    # No foreign key: jobs may be purged without touching the fire history.
    job_id: Mapped[int] = mapped_column(Integer, primary_key=True)


class SeenFile(Base):
    """What a schedule's sweep has already queued: one row per (pipeline, file).

    The "already seen" memory of sweeps, kept apart from `jobs` so that it survives a
    restart and the retention of old jobs (an unchanged file is not run again when its
    job was purged). A file whose (size, mtime_ns) is unchanged is skipped without being
    read; a row is removed once a complete walk no longer finds its file.
    """

    __tablename__ = "swept_files"

    pipeline: Mapped[str] = mapped_column(String(200), primary_key=True)
    # sha256 of the path: paths may be longer than an index entry allows.
    path_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class PipelineClaimLock(Base):
    """One row per capped pipeline (`max_concurrent`), locked by PostgreSQL claims.

    A claim of a capped pipeline locks its row (FOR UPDATE SKIP LOCKED) while it counts
    that pipeline's running jobs, so two daemons never both take the last free place.
    The daemon's own table: no other role is granted anything on it, so no neighbour
    can hold the lock (any role may hold any advisory lock, which this replaced).
    """

    __tablename__ = "pipeline_claim_locks"

    pipeline: Mapped[str] = mapped_column(String(200), primary_key=True)
