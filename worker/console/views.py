"""What each console page shows, computed from the snapshot: plain functions of data
and `now`, no I/O (the templates only lay them out)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from worker.queue.snapshot_reads import BatchRow, JobRow, TableState

OVERVIEW_STATUSES = ("queued", "running", "waiting", "failed", "dead")
FAILURE_FILTERS = ("failed", "dead", "cancelled")
CHART_WIDTH = 600
CHART_HEIGHT = 120


@dataclass(frozen=True)
class PipelineRow:
    name: str
    counts: dict[str, int]
    oldest_queued_age: float | None
    paused: bool
    known: bool  # a pipeline file of this daemon (else: only rows name it)


def pipeline_rows(
    table: TableState | None,
    pipelines: Collection[str],
    paused: Collection[str],
    now: datetime,
) -> list[PipelineRow]:
    """One row per pipeline this daemon serves or the table names, by name."""
    counts = table.counts if table else {}
    names = sorted(set(pipelines) | {p for p, _ in counts})
    rows = []
    for name in names:
        by_status = {s: counts.get((name, s), 0) for s in (*OVERVIEW_STATUSES, "succeeded")}
        by_status["cancelled"] = counts.get((name, "cancelled"), 0)
        oldest = table.oldest_queued.get(name) if table else None
        age = (now - oldest).total_seconds() if oldest is not None else None
        rows.append(PipelineRow(name, by_status, age, name in paused, name in pipelines))
    return rows


def totals(rows: Iterable[PipelineRow]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        for status, n in row.counts.items():
            out[status] = out.get(status, 0) + n
    return out


@dataclass(frozen=True)
class Chart:
    """An inline SVG chart: polyline points for jobs/s and tokens/s, with their peaks."""

    jobs_points: str
    tokens_points: str
    peak_jobs_per_s: float
    peak_tokens_per_s: float
    last_jobs_per_s: float
    last_tokens_per_s: float
    minutes: int
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT


def _points(values: Sequence[float], peak: float) -> str:
    if not values:
        return ""
    step = CHART_WIDTH / max(1, len(values) - 1)
    scale = (CHART_HEIGHT - 4) / peak if peak > 0 else 0.0
    return " ".join(
        f"{i * step:.1f},{CHART_HEIGHT - 2 - v * scale:.1f}" for i, v in enumerate(values)
    )


def throughput_chart(per_minute: Sequence[tuple[datetime, int, int]]) -> Chart:
    """Jobs/s and tokens/s per minute of the last hour (each minute's total over 60 s)."""
    jobs = [n / 60.0 for _, n, _ in per_minute]
    tokens = [t / 60.0 for _, _, t in per_minute]
    peak_jobs = max(jobs, default=0.0)
    peak_tokens = max(tokens, default=0.0)
    return Chart(
        _points(jobs, peak_jobs),
        _points(tokens, peak_tokens),
        peak_jobs,
        peak_tokens,
        jobs[-1] if jobs else 0.0,
        tokens[-1] if tokens else 0.0,
        len(per_minute),
    )


def input_label(job: JobRow) -> str:
    """What a person recognises a job's input by: its file, else its first characters."""
    if job.source_path:
        return job.source_path
    if job.label:
        return job.label.replace("\n", " ")
    return f"job {job.id}"


def failures(table: TableState | None, pipeline: str = "", status: str = "") -> list[JobRow]:
    """The snapshot's failed, dead and cancelled jobs matching the filters, newest first."""
    rows = table.failures if table else ()
    return [
        job
        for job in rows
        if (not pipeline or job.pipeline == pipeline) and (not status or job.status == status)
    ]


def find_job(table: TableState | None, job_id: int) -> JobRow | None:
    """A job in the snapshot: with its previews if its page was read, else from a list."""
    if table is None:
        return None
    if job_id in table.details:
        return table.details[job_id]
    for rows in (table.running, table.failures, table.recent):
        for job in rows:
            if job.id == job_id:
                return job
    return None


@dataclass(frozen=True)
class Step:
    at: datetime | None
    what: str


def timeline(job: JobRow) -> list[Step]:
    """The job's life from its row's times, in order (no event table: these are the
    moments the row records)."""
    steps = [Step(job.created_at, "created (queued)")]
    if job.run_after and job.created_at and job.run_after > job.created_at and job.attempts:
        steps.append(Step(job.run_after, "due again (retry or requeue)"))
    if job.started_at:
        steps.append(Step(job.started_at, f"started (attempt {job.attempts})"))
    if job.crashes:
        steps.append(Step(None, f"the worker died during {job.crashes} attempt(s)"))
    if job.finished_at:
        steps.append(Step(job.finished_at, job.status))
    elif job.status in ("running", "waiting", "queued"):
        steps.append(Step(job.updated_at, f"now {job.status}"))
    return sorted(steps, key=lambda s: (s.at is None, s.at.timestamp() if s.at else 0.0))


@dataclass(frozen=True)
class BatchView:
    row: BatchRow
    completed: int
    failed: int
    percent: int


def batch_views(batches: Sequence[BatchRow]) -> list[BatchView]:
    """Live request counts of each batch, as OpenAI's `request_counts` would say."""
    out = []
    for batch in batches:
        counts: Mapping[str, int] = batch.by_status
        completed = counts.get("succeeded", 0)
        failed = sum(counts.get(s, 0) for s in ("failed", "dead", "cancelled"))
        done = completed + failed
        percent = int(100 * done / batch.total) if batch.total else 0
        out.append(BatchView(batch, completed, failed, min(100, percent)))
    return out


def age_text(seconds: float | None) -> str:
    """`3 s`, `4 min`, `2.5 h`, `3.0 d`; an em dash for none."""
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def size_text(count: int | None) -> str:
    if count is None:
        return "—"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
