"""The `edge-worker` command: its top-level commands (run, submit, status, schedules)
and the command groups of the other modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from worker.cli import common
from worker.cli.batch import batch_app
from worker.cli.db import db_app
from worker.cli.jobs import jobs_app
from worker.cli.model import model_app
from worker.cli.pipelines import pipelines_app
from worker.cli.schedules import schedules
from worker.errors import ModelError
from worker.pipelines.spec import PipelineError
from worker.queue.models import JobStatus

app = typer.Typer(help="Offline batch inference with llama.cpp.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(batch_app, name="batch")
app.command()(schedules)


@app.callback()
def _main(config: common.ConfigOption = None) -> None:
    common.state.config_path = config


@app.command()
def run(
    once: Annotated[
        bool, typer.Option("--once", help="Drain the queue and the inboxes, then exit.")
    ] = False,
) -> None:
    """Run the daemon in the foreground (SIGTERM or Ctrl-C stops it cleanly)."""
    import signal

    # SIGHUP (`systemctl reload`) kills a process by default: held back until the daemon's
    # handler exists (run_daemon unblocks it), so one sent during the model load is a
    # reload once the daemon is up, not the end of it. Threads inherit the block.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    from worker import logs
    from worker.config import load_settings
    from worker.io.instance import InstanceIdError
    from worker.ops.daemon import run_daemon
    from worker.ops.metrics import MetricsError
    from worker.ops.services import ServiceDied

    settings = common.settings()
    logs.configure(settings.log_format, settings.log_level)
    try:
        run_daemon(
            settings, once=once, reload_settings=lambda: load_settings(common.state.config_path)
        )
    except PipelineError as exc:
        raise common.fatal(f"invalid pipeline:\n{exc}", 2) from None
    except ModelError as exc:
        raise common.fatal(str(exc), 3) from None
    except InstanceIdError as exc:
        raise common.fatal(str(exc), 2) from None
    except MetricsError as exc:
        raise common.fatal(str(exc), 2) from None
    except ServiceDied as exc:
        raise common.fatal(f"{exc}; see the log above", 1) from None


@app.command()
def submit(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True)],
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="Pipeline to run.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the results.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600,
    priority: Annotated[
        int, typer.Option("--priority", help="Higher runs first; inbox files run at 0.")
    ] = 0,
) -> None:
    """Copy files into a pipeline's inbox and queue them; with --wait, show progress until
    they are done."""
    from worker.io.instance import instance_id
    from worker.io.submit import copy_into_inbox, wait_keys

    settings = common.settings()
    common.check_pipeline(settings, pipeline)  # before anything is created
    store = common.open_store(settings)
    keys = []
    for path in files:
        submitted = copy_into_inbox(settings, pipeline, path)
        common.enqueue_submitted(store, submitted, priority, instance_id(settings.data_dir))
        keys.append(submitted)
    for path, key in zip(files, keys, strict=True):
        common.console.print(f"queued {path.name} -> inbox/{pipeline}/{key.ref.name}", markup=False)
    if not wait:
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=common.err, transient=True) as progress:
        task = progress.add_task(escape(pipeline), total=len(keys))  # the column reads markup
        jobs = wait_keys(store, keys, timeout, lambda n: progress.update(task, completed=n))
    table = Table("file", "status", "result / error")
    failed = False
    for key in keys:
        job = jobs.get(key.key)
        if job is None:
            table.add_row(Text(key.ref.name), "not picked up", "is the daemon running?")
            failed = True
            continue
        failed = failed or job.status != JobStatus.SUCCEEDED
        detail = job.output_path if job.status == JobStatus.SUCCEEDED else job.error
        table.add_row(Text(key.ref.name), Text(job.status), Text(detail or ""))
    common.console.print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON with stable keys (one object per refresh).")
    ] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.2)] = 2.0,
) -> None:
    """Queue by pipeline, the last minute's throughput, running jobs and the daemons.

    tokens/s is the completion tokens of the jobs that succeeded in the last 60 s
    (all daemons), divided by 60 s: the sum of the daemons' edge_worker_tokens_per_second.
    """
    from worker.ops.status import watch_status

    settings = common.settings()
    store = common.open_store(settings)
    watch_status(settings, store, common.console, as_json=as_json, watch=watch, interval=interval)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
