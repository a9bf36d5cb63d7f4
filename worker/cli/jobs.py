"""`edge-worker jobs ...`: list, show, retry, cancel, purge and export jobs.

`--json` output and export lines have stable keys (README, "Jobs from the command
line"): scripts may rely on them; the tables are for people and may change.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from rich.table import Table
from rich.text import Text

from worker.cli import common
from worker.queue.models import JobStatus

if TYPE_CHECKING:
    from worker.queue.jobs import JobStore
    from worker.queue.models import Job

jobs_app = typer.Typer(help="Inspect and act on jobs.", no_args_is_help=True)

# Stable keys of `jobs list --json`.
LIST_KEYS = (
    "id",
    "pipeline",
    "status",
    "priority",
    "attempts",
    "source",
    "source_path",
    "error",
    "parent_id",
    "created_at",
    "started_at",
    "finished_at",
)
# Stable keys of `jobs show --json`: the job's columns but the lease token (a write
# credential) and the guards' bookkeeping (claimed_alone, submitted_by).
SHOW_KEYS = (
    "id",
    "pipeline",
    "status",
    "priority",
    "attempts",
    "crashes",
    "source",
    "source_path",
    "idempotency_key",
    "input_text",
    "result_text",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "output_path",
    "archived_path",
    "parent_id",
    "item_index",
    "lease_owner",
    "lease_expires_at",
    "run_after",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "origin",
    "model",
    "input_owner",
)
# Stable keys of one `jobs export` line: a finished job and its result.
EXPORT_KEYS = (
    "id",
    "pipeline",
    "status",
    "source",
    "source_path",
    "input_text",
    "result_text",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "output_path",
    "attempts",
    "priority",
    "parent_id",
    "item_index",
    "created_at",
    "started_at",
    "finished_at",
)
RETRYABLE = (JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED)


class ExportFormat(StrEnum):
    JSONL = "jsonl"


StatusOption = Annotated[
    JobStatus | None, typer.Option("--status", help="Only jobs with this status.")
]
PipelineOption = Annotated[str | None, typer.Option("--pipeline", "-p", help="Only this pipeline.")]
JsonOption = Annotated[
    bool, typer.Option("--json", help="One JSON document with stable keys (README).")
]


def job_data(job: Job, keys: tuple[str, ...]) -> dict[str, Any]:
    """`job` as plain data: `keys` in order, times as ISO 8601 strings (UTC)."""
    data: dict[str, Any] = {}
    for key in keys:
        value = getattr(job, key)
        data[key] = value.isoformat() if isinstance(value, datetime) else value
    return data


@jobs_app.command("list")
def jobs_list(
    status_filter: StatusOption = None,
    pipeline: PipelineOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1)] = 50,
    as_json: JsonOption = False,
) -> None:
    """The newest jobs."""
    settings = common.settings()
    store = common.open_store(settings)
    if pipeline is not None:
        common.check_pipeline(settings, pipeline, store)
    jobs = store.list_jobs(status=status_filter, pipeline=pipeline, limit=limit)
    if as_json:
        common.write_json([job_data(job, LIST_KEYS) for job in jobs])
        return
    table = Table("id", "pipeline", "status", "attempts", "source", "created", "error")
    for job in jobs:
        table.add_row(
            str(job.id),
            Text(job.pipeline),
            Text(job.status),
            str(job.attempts),
            Text(job.source_path or job.source),
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            Text((job.error or "")[:80]),
        )
    common.console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: int, as_json: JsonOption = False) -> None:
    """Every column of one job, and for a queued job what it waits for."""
    from worker.ops.fleet import daemon_of, waiting_reason
    from worker.queue.jobs import utcnow

    settings = common.settings()
    store = common.open_store(settings)
    job = store.get(job_id)
    if job is None:
        raise common.fatal(f"no job {job_id}", 1)
    now = utcnow()
    daemons = [daemon_of(w, now, settings.lease_seconds) for w in store.list_workers()]
    reason = waiting_reason(job, daemons, settings.unknown_pipeline_grace)
    if as_json:
        common.write_json({**job_data(job, SHOW_KEYS), "waiting_reason": reason})
        return
    table = Table("column", "value", show_header=False)
    for column in job.__table__.columns:
        table.add_row(column.name, Text(str(getattr(job, column.key))))
    if reason is not None:
        table.add_row("waiting", Text(reason))
    common.console.print(table)


@jobs_app.command("retry")
def jobs_retry(
    job_ids: Annotated[list[int] | None, typer.Argument(help="Ids of the jobs to retry.")] = None,
    status_filter: Annotated[
        JobStatus | None,
        typer.Option("--status", help="Instead of ids: every job with this status."),
    ] = None,
    pipeline: Annotated[
        str | None,
        typer.Option("--pipeline", "-p", help="Instead of ids: every retryable job of it."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Also run succeeded jobs again.")] = False,
) -> None:
    """Queue failed, dead or cancelled jobs again (succeeded ones only with --force).

    By ids (`jobs retry 12 13`) or by filter (`jobs retry --status dead --pipeline
    summarize`). A file job's original goes back into its inbox and runs as a new job.
    """
    from worker.io.submit import restore_original

    settings = common.settings()
    if job_ids and (status_filter or pipeline):
        raise common.fatal("give job ids or --status/--pipeline, not both", 2)
    if not job_ids and not (status_filter or pipeline):
        raise common.fatal("give job ids, or --status and/or --pipeline", 2)
    allowed = (*RETRYABLE, JobStatus.SUCCEEDED) if force else RETRYABLE
    if status_filter is not None and status_filter not in allowed:
        hint = " (add --force)" if status_filter == JobStatus.SUCCEEDED else ""
        raise common.fatal(f"--status {status_filter}: jobs with it do not retry{hint}", 2)
    store = common.open_store(settings)
    problems = 0
    if job_ids:
        jobs: list[Job] = []
        for job_id in dict.fromkeys(job_ids):
            job = store.get(job_id)
            if job is None:
                common.err.print(f"no job {job_id}", markup=False)
                problems += 1
            elif job.status not in allowed:
                hint = "; --force runs it again" if job.status == JobStatus.SUCCEEDED else ""
                common.err.print(f"job {job_id} is {job.status}{hint}", markup=False)
                problems += 1
            else:
                jobs.append(job)
    else:
        if pipeline is not None:
            common.check_pipeline(settings, pipeline, store)
        wanted = [status_filter] if status_filter else list(RETRYABLE)
        # Top-level jobs only: a line of a finished file job has no parent left to gather
        # its new result (retry the file job, or the line by its id).
        found = (j for s in wanted for j in store.list_jobs(s, pipeline, limit=None))
        jobs = [j for j in found if j.parent_id is None]
    queue: list[int] = []
    moved = 0
    for job in sorted(jobs, key=lambda j: j.id):
        restored = restore_original(settings, job, store)
        if restored is None:
            queue.append(job.id)
            continue
        moved += 1
        common.console.print(
            f"job {job.id}: original moved back to {restored}; it runs as a new file job",
            markup=False,
        )
    queued = store.retry_many(queue, force=force)
    for job_id in sorted(set(queue) - set(queued)):
        common.err.print(f"job {job_id} changed meanwhile; not queued again", markup=False)
        problems += 1
    if job_ids:
        for job_id in queued:
            common.console.print(f"job {job_id} queued again")
    common.console.print(f"{len(queued)} job(s) queued again, {moved} original(s) moved back")
    if problems:
        raise typer.Exit(1)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int) -> None:
    """Cancel a queued or running job."""
    store = common.open_store(common.settings())
    if not store.cancel(job_id):
        raise common.fatal(f"job {job_id} is not queued or running", 1)
    common.console.print(f"job {job_id} cancelled")


@jobs_app.command("purge")
def jobs_purge(
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than", min=0, help="Days since a job finished (the daemon: retention_days)."
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what would be deleted.")
    ] = False,
) -> None:
    """Delete finished jobs older than DAYS with their files in done/ and failed/.

    Also the rows of daemons stopped over a day ago and schedule fires that enqueued
    nothing (the newest fire of each pipeline stays). Outputs in outbox/ are kept.
    """
    from worker.ops.housekeeping import purge
    from worker.queue.housekeeping import HousekeepingStore

    settings = common.settings()
    store = common.open_store(settings)
    report = purge(settings, HousekeepingStore(store.db), older_than, dry_run=dry_run)
    common.console.print(report.describe(dry_run), markup=False)


@jobs_app.command("export")
def jobs_export(
    since: Annotated[
        str,
        typer.Option(
            "--since", help="ISO time: jobs finished at or after it (no offset means UTC)."
        ),
    ],
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="jsonl: one JSON object per line.")
    ] = ExportFormat.JSONL,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default stdout).")
    ] = None,
    pipeline: PipelineOption = None,
) -> None:
    """Finished jobs with their results, oldest id first, one JSON object per line."""
    settings = common.settings()
    start = common.parse_time(since, "--since")
    store = common.open_store(settings)
    if pipeline is not None:
        common.check_pipeline(settings, pipeline, store)
    if output is None:
        count = _export(store, start, pipeline, sys.stdout)
        common.err.print(f"exported {count} job(s)", markup=False)
        return
    # Written beside the target and renamed: a reader never sees half an export.
    tmp = output.with_name(f".{output.name}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            count = _export(store, start, pipeline, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise common.fatal(f"cannot write {output}: {exc}", 1) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    common.err.print(f"exported {count} job(s) to {output}", markup=False)


def _export(store: JobStore, since: datetime, pipeline: str | None, out: TextIO) -> int:
    from worker.queue.views import finished_jobs

    count = 0
    after = 0
    while page := finished_jobs(store, since, pipeline, after_id=after):
        for job in page:
            out.write(json.dumps(job_data(job, EXPORT_KEYS)) + "\n")
        count += len(page)
        after = page[-1].id
    return count
