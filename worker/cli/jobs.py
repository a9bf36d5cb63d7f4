"""`edge-worker jobs ...`: list, show, retry and cancel jobs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from worker.cli import common

jobs_app = typer.Typer(help="Inspect and act on jobs.", no_args_is_help=True)


@jobs_app.command("list")
def jobs_list(
    status_filter: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", "-p")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 50,
) -> None:
    """The newest jobs."""
    store = common.open_store(common.settings())
    table = Table("id", "pipeline", "status", "attempts", "source", "created", "error")
    for job in store.list_jobs(status=status_filter, pipeline=pipeline, limit=limit):
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
def jobs_show(job_id: int) -> None:
    """Every column of one job."""
    store = common.open_store(common.settings())
    job = store.get(job_id)
    if job is None:
        raise common.fatal(f"no job {job_id}", 1)
    table = Table("column", "value", show_header=False)
    for column in job.__table__.columns:
        table.add_row(column.name, Text(str(getattr(job, column.key))))
    common.console.print(table)


@jobs_app.command("retry")
def jobs_retry(job_id: int) -> None:
    """Queue a failed, dead or cancelled job again."""
    from worker.io.submit import restore_original

    settings = common.settings()
    store = common.open_store(settings)
    job = store.get(job_id)
    if job is None:
        raise common.fatal(f"no job {job_id}", 1)
    restored = restore_original(settings, job)
    if restored is not None:
        common.console.print(
            f"original moved back to {restored}; it runs as a new file job", markup=False
        )
        return
    if not store.retry(job_id):
        raise common.fatal(
            f"job {job_id} is {job.status}; only failed, dead or cancelled jobs retry", 1
        )
    common.console.print(f"job {job_id} queued again", markup=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int) -> None:
    """Cancel a queued or running job."""
    store = common.open_store(common.settings())
    if not store.cancel(job_id):
        raise common.fatal(f"job {job_id} is not queued or running", 1)
    common.console.print(f"job {job_id} cancelled", markup=False)
