"""Read-only queries behind the HTTP port's cached snapshot (`worker.ops.snapshot`).

One call of `read_table` is a handful of short, bounded reads (counts, oldest queued,
running, recent failures, recent jobs, batches, schedule fires, workers, per-minute
throughput), run by one background loop every few seconds; no request of the port
ever queries the database itself. Texts are cut in SQL (`substr`), so a huge input or
result never travels to the daemon for a page.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, cast, func, select, type_coerce
from sqlalchemy.sql import ColumnElement

from worker.queue.jobs import JobStore
from worker.queue.models import Batch, Job, JobStatus, ScheduleFire, UTCDateTime, Worker

LIST_LIMIT = 200
RECENT_LIMIT = 100
ERROR_CHARS = 2000
LABEL_CHARS = 120
PREVIEW_CHARS = 4000
CHART_WINDOW = timedelta(hours=1)
FAILURE_STATUSES = (JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED)


@dataclass(frozen=True)
class JobRow:
    """One job as the console shows it (texts cut to a preview)."""

    id: int
    pipeline: str
    status: str
    source: str
    source_path: str | None
    label: str | None  # the first characters of a row's input_text
    attempts: int
    crashes: int
    priority: int
    error: str | None
    created_at: datetime | None
    run_after: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    prompt_tokens: int | None
    completion_tokens: int | None
    output_path: str | None
    archived_path: str | None
    parent_id: int | None
    item_index: int | None
    lease_owner: str | None
    input_preview: str | None = None  # only for jobs whose page was asked for
    result_preview: str | None = None


@dataclass(frozen=True)
class BatchRow:
    """An OpenAI Batch file and its live request counts."""

    id: str
    job_id: int
    input_name: str
    endpoint: str
    status: str
    total: int
    by_status: dict[str, int]
    created_at: datetime | None
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None


@dataclass(frozen=True)
class FireRow:
    pipeline: str
    fire_time: datetime
    catch_up: bool
    recorded_at: datetime | None
    jobs_enqueued: int


@dataclass(frozen=True)
class WorkerRow:
    id: str
    host: str
    pid: int
    model: str
    slots: int
    state: str
    heartbeat_at: datetime | None


@dataclass(frozen=True)
class TableState:
    """What the job table held at `taken_at`."""

    taken_at: datetime
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_queued: dict[str, datetime] = field(default_factory=dict)
    running: tuple[JobRow, ...] = ()
    failures: tuple[JobRow, ...] = ()
    recent: tuple[JobRow, ...] = ()
    details: dict[int, JobRow] = field(default_factory=dict)
    batches: tuple[BatchRow, ...] = ()
    last_fires: dict[str, FireRow] = field(default_factory=dict)
    workers: tuple[WorkerRow, ...] = ()
    # (minute start, jobs succeeded, completion tokens) over the last hour, oldest first.
    per_minute: tuple[tuple[datetime, int, int], ...] = ()


def _job_columns(preview: bool) -> list[Any]:
    columns: list[Any] = [
        Job.id,
        Job.pipeline,
        Job.status,
        Job.source,
        Job.source_path,
        func.substr(Job.input_text, 1, LABEL_CHARS),
        Job.attempts,
        Job.crashes,
        Job.priority,
        func.substr(Job.error, 1, ERROR_CHARS),
        Job.created_at,
        Job.run_after,
        Job.started_at,
        Job.finished_at,
        Job.updated_at,
        Job.prompt_tokens,
        Job.completion_tokens,
        Job.output_path,
        Job.archived_path,
        Job.parent_id,
        Job.item_index,
        Job.lease_owner,
    ]
    if preview:
        columns += [
            func.substr(Job.input_text, 1, PREVIEW_CHARS),
            func.substr(Job.result_text, 1, PREVIEW_CHARS),
        ]
    return columns


def _rows(store: JobStore, *where: ColumnElement[bool], order: Any, limit: int) -> list[JobRow]:
    stmt = select(*_job_columns(False)).where(*where).order_by(*order).limit(limit)
    with store.db.connect() as conn:
        return [JobRow(*row) for row in conn.execute(stmt)]


def _details(store: JobStore, ids: Collection[int]) -> dict[int, JobRow]:
    if not ids:
        return {}
    stmt = select(*_job_columns(True)).where(Job.id.in_(sorted(ids)))
    with store.db.connect() as conn:
        return {row[0]: JobRow(*row) for row in conn.execute(stmt)}


def _epoch_minute(db_name: str, column: Any) -> Any:
    if db_name == "postgresql":
        seconds: Any = func.extract("epoch", column)
    else:  # SQLite keeps naive UTC text; strftime('%s') reads it as UTC
        seconds = cast(func.strftime("%s", column), Integer)
    return cast(func.floor(seconds / 60), Integer) if db_name == "postgresql" else seconds / 60


def _per_minute(store: JobStore, now: datetime) -> tuple[tuple[datetime, int, int], ...]:
    since = now - CHART_WINDOW
    minute = _epoch_minute(store.db.dialect.name, Job.finished_at).label("minute")
    stmt = (
        select(minute, func.count(), func.coalesce(func.sum(Job.completion_tokens), 0))
        .where(Job.status == JobStatus.SUCCEEDED, Job.finished_at >= since)
        .group_by(minute)
    )
    with store.db.connect() as conn:
        found = {int(m): (int(n), int(t or 0)) for m, n, t in conn.execute(stmt) if m is not None}
    first = int(since.timestamp()) // 60 + 1
    last = int(now.timestamp()) // 60
    start = datetime.fromtimestamp(0, now.tzinfo)
    return tuple(
        (start + timedelta(minutes=m), *found.get(m, (0, 0))) for m in range(first, last + 1)
    )


def _batches(store: JobStore) -> tuple[BatchRow, ...]:
    with store.db.connect() as conn:
        batches = list(
            conn.execute(
                select(
                    Batch.id,
                    Batch.job_id,
                    Batch.input_name,
                    Batch.endpoint,
                    Batch.status,
                    Batch.request_total,
                    Batch.created_at,
                    Batch.in_progress_at,
                    Batch.finalizing_at,
                    Batch.completed_at,
                    Batch.failed_at,
                    Batch.cancelled_at,
                )
                .order_by(Batch.created_at.desc(), Batch.id.desc())
                .limit(50)
            )
        )
        parents = [row.job_id for row in batches]
        counts: dict[int, dict[str, int]] = {}
        if parents:
            stmt = (
                select(Job.parent_id, Job.status, func.count())
                .where(Job.parent_id.in_(parents))
                .group_by(Job.parent_id, Job.status)
            )
            for parent, status, n in conn.execute(stmt):
                if parent is not None:
                    counts.setdefault(parent, {})[status] = n
    return tuple(
        BatchRow(
            row.id,
            row.job_id,
            row.input_name,
            row.endpoint,
            row.status,
            row.request_total,
            counts.get(row.job_id, {}),
            row.created_at,
            row.in_progress_at,
            row.finalizing_at,
            row.completed_at,
            row.failed_at,
            row.cancelled_at,
        )
        for row in batches
    )


def _last_fires(store: JobStore) -> dict[str, FireRow]:
    latest = (
        select(ScheduleFire.pipeline, func.max(ScheduleFire.fire_time).label("at"))
        .group_by(ScheduleFire.pipeline)
        .subquery()
    )
    stmt = select(
        ScheduleFire.pipeline,
        ScheduleFire.fire_time,
        ScheduleFire.catch_up,
        ScheduleFire.recorded_at,
        ScheduleFire.jobs_enqueued,
    ).join(
        latest,
        (ScheduleFire.pipeline == latest.c.pipeline) & (ScheduleFire.fire_time == latest.c.at),
    )
    with store.db.connect() as conn:
        return {row[0]: FireRow(*row) for row in conn.execute(stmt)}


def _workers(store: JobStore) -> tuple[WorkerRow, ...]:
    stmt = (
        select(
            Worker.id,
            Worker.host,
            Worker.pid,
            Worker.model,
            Worker.slots,
            Worker.state,
            Worker.heartbeat_at,
        )
        .order_by(Worker.heartbeat_at.desc())
        .limit(20)
    )
    with store.db.connect() as conn:
        return tuple(WorkerRow(*row) for row in conn.execute(stmt))


def read_table(store: JobStore, now: datetime, detail_ids: Collection[int] = ()) -> TableState:
    """Everything the port serves, read in a few bounded queries."""
    counts = store.counts()
    oldest_stmt = (
        select(Job.pipeline, type_coerce(func.min(Job.created_at), UTCDateTime()))
        .where(Job.status == JobStatus.QUEUED)
        .group_by(Job.pipeline)
    )
    with store.db.connect() as conn:
        oldest = {p: t for p, t in conn.execute(oldest_stmt) if t is not None}
    running = _rows(
        store, Job.status == JobStatus.RUNNING, order=(Job.started_at, Job.id), limit=LIST_LIMIT
    )
    failures = _rows(
        store,
        Job.status.in_(list(FAILURE_STATUSES)),
        order=(Job.id.desc(),),
        limit=LIST_LIMIT,
    )
    recent = _rows(store, Job.id > 0, order=(Job.id.desc(),), limit=RECENT_LIMIT)
    return TableState(
        taken_at=now,
        counts=counts,
        oldest_queued=oldest,
        running=tuple(running),
        failures=tuple(failures),
        recent=tuple(recent),
        details=_details(store, detail_ids),
        batches=_batches(store),
        last_fires=_last_fires(store),
        workers=_workers(store),
        per_minute=_per_minute(store, now),
    )
