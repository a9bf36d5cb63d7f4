"""`edge-worker batch ...`: submit OpenAI Batch files, follow, inspect and cancel them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from worker.batch.files import FINAL_BATCH
from worker.batch.ids import batch_id_for, job_id_of
from worker.cli import common
from worker.queue.models import FINAL_STATUSES, JobStatus

if TYPE_CHECKING:
    from worker.queue.jobs import JobStore

batch_app = typer.Typer(help="OpenAI Batch API files (inbox/batch/).", no_args_is_help=True)


def describe(store: JobStore, batch_id: str) -> dict[str, Any] | None:
    """The batch object now: from its record, or (not yet read by a daemon) from its job."""
    from worker.batch.files import batch_object, request_counts

    batch = store.get_batch(batch_id)
    if batch is not None:
        counts = request_counts(batch.request_total, store.child_counts(batch.job_id))
        return batch_object(batch, counts)
    job_id = job_id_of(batch_id)
    job = store.get(job_id) if job_id is not None else None
    if job is None or job.source != "file":
        return None
    status = "validating" if job.status in (JobStatus.QUEUED, JobStatus.RUNNING) else job.status
    if status != "validating":
        status = "cancelled" if job.status == "cancelled" else "failed"
    errors = [{"code": "invalid_file", "message": job.error, "param": None, "line": None}]
    return {
        "id": batch_id,
        "object": "batch",
        "input_file_id": job.source_path,
        "status": status,
        "errors": {"object": "list", "data": errors} if job.error else None,
        "created_at": int(job.created_at.timestamp()),
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
    }


@batch_app.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the batch is done.")] = False,
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="Batch pipeline.")] = "batch",
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 86400,
) -> None:
    """Queue an OpenAI Batch input file; prints its batch id (with --wait, the result)."""
    from worker.io.instance import instance_id
    from worker.io.submit import copy_into_inbox
    from worker.queue.jobs import NewJob

    settings = common.settings()
    common.check_pipeline(settings, pipeline)
    store = common.open_store(settings)
    submitted = copy_into_inbox(settings, pipeline, file)
    # Queued here, under the key the watcher would use, so the id is known at once.
    job_id = store.enqueue(
        NewJob(
            pipeline,
            source="file",
            source_path=submitted.ref.source_path,
            idempotency_key=submitted.key,
            origin=instance_id(settings.data_dir),
        )
    )
    if job_id is None:
        existing = store.get_by_key(submitted.key)
        assert existing is not None
        job_id = existing.id
    batch_id = batch_id_for(job_id)
    common.console.print(batch_id, markup=False, highlight=False)
    common.err.print(
        f"queued {file.name} -> inbox/{pipeline}/{submitted.ref.name}",
        markup=False,
        highlight=False,
    )
    if not wait:
        return
    deadline = time.monotonic() + timeout
    described = describe(store, batch_id)
    while described is None or described["status"] not in FINAL_BATCH:
        if time.monotonic() >= deadline:
            raise common.fatal(f"{batch_id} is not done after {timeout:g} s", 1)
        time.sleep(0.5)
        described = describe(store, batch_id)
    common.console.print_json(json.dumps(described))
    if described["status"] != "completed":
        raise typer.Exit(1)


@batch_app.command("list")
def list_batches(limit: Annotated[int, typer.Option("--limit", "-n")] = 50) -> None:
    """The newest batches with their status and request counts."""
    store = common.open_store(common.settings())
    table = Table("id", "status", "input", "endpoint", "total", "completed", "failed", "created")
    for batch in store.list_batches(limit):
        described = describe(store, batch.id)
        assert described is not None
        counts = described["request_counts"]
        table.add_row(
            Text(batch.id),
            Text(batch.status),
            Text(batch.input_name),
            Text(batch.endpoint),
            str(counts["total"]),
            str(counts["completed"]),
            str(counts["failed"]),
            batch.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    common.console.print(table)


@batch_app.command("show")
def show(batch_id: str) -> None:
    """The batch object (OpenAI's shape) as JSON, with live request counts."""
    described = describe(common.open_store(common.settings()), batch_id)
    if described is None:
        raise common.fatal(f"no batch {batch_id}", 1)
    common.console.print_json(json.dumps(described))


@batch_app.command("cancel")
def cancel(batch_id: str) -> None:
    """Cancel a batch: lines not yet finished are cancelled; the result files still come."""
    from worker.queue.jobs import utcnow

    store = common.open_store(common.settings())
    batch = store.get_batch(batch_id)
    if batch is None:
        job_id = job_id_of(batch_id)
        job = store.get(job_id) if job_id is not None else None
        if job is None:
            raise common.fatal(f"no batch {batch_id}", 1)
        if job.status in FINAL_STATUSES or not store.cancel(job.id):
            raise common.fatal(f"{batch_id} is {job.status}; nothing to cancel", 1)
        common.console.print(f"{batch_id} cancelled before it was read", markup=False)
        return
    if not store.update_batch(
        batch_id, ("in_progress",), status="cancelling", cancelling_at=utcnow()
    ):
        raise common.fatal(f"{batch_id} is {batch.status}; only an in_progress batch cancels", 1)
    cancelled = store.cancel_children(batch.job_id, "cancelled by operator")
    store.wake_parent(batch.job_id)
    common.console.print(f"{batch_id} cancelling: {cancelled} request(s) cancelled", markup=False)
