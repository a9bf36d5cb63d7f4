"""The `edge-worker` command line (Typer + rich)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.config import ConfigError, Settings, load_settings
from worker.db.models import SUCCEEDED
from worker.engine import ModelError
from worker.pipelines import PipelineError

if TYPE_CHECKING:
    from worker.store import JobStore

app = typer.Typer(help="Offline batch inference with llama.cpp.", no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect and act on jobs.", no_args_is_help=True)
pipelines_app = typer.Typer(help="Pipelines from the pipelines folder.", no_args_is_help=True)
db_app = typer.Typer(help="The job database.", no_args_is_help=True)
model_app = typer.Typer(help="The model file.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")

console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (or EDGE_WORKER_CONFIG)."),
]
_config_path: Path | None = None


@app.callback()
def _main(config: ConfigOption = None) -> None:
    global _config_path
    _config_path = config


def _settings() -> Settings:
    try:
        return load_settings(_config_path)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def _store(settings: Settings, migrate: bool = True) -> JobStore:
    from worker.db.engine import make_engine
    from worker.db.migrate import upgrade
    from worker.store import JobStore

    url = settings.resolved_database_url
    if migrate:
        upgrade(url)
    return JobStore(make_engine(url))


def _fatal(message: str, code: int) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


# run ---------------------------------------------------------------------------
@app.command()
def run(
    once: Annotated[
        bool, typer.Option("--once", help="Drain the queue and the inboxes, then exit.")
    ] = False,
) -> None:
    """Run the daemon in the foreground (SIGTERM or Ctrl-C stops it cleanly)."""
    from worker import logs
    from worker.daemon import run_daemon
    from worker.metrics import MetricsError

    settings = _settings()
    logs.configure(settings.log_format, settings.log_level)
    try:
        run_daemon(settings, once=once)
    except PipelineError as exc:
        raise _fatal(f"invalid pipeline:\n{exc}", 2) from None
    except ModelError as exc:
        raise _fatal(str(exc), 3) from None
    except MetricsError as exc:
        raise _fatal(str(exc), 2) from None


# submit ------------------------------------------------------------------------
@app.command()
def submit(
    files: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, readable=True)],
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help="Pipeline to run.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the results.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600,
) -> None:
    """Copy files into a pipeline's inbox; with --wait, show progress until they are done."""
    from worker.submit import copy_into_inbox, wait_keys

    settings = _settings()
    store = _store(settings)
    keys = [copy_into_inbox(settings, pipeline, path) for path in files]
    for path, key in zip(files, keys, strict=True):
        console.print(f"queued {path.name} -> inbox/{pipeline}/{key.ref.name}")
    if not wait:
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(f"{pipeline}", total=len(keys))
        jobs = wait_keys(store, keys, timeout, lambda n: progress.update(task, completed=n))
    table = Table("file", "status", "result / error")
    failed = False
    for key in keys:
        job = jobs.get(key.key)
        if job is None:
            table.add_row(key.ref.name, "not picked up", "is the daemon running?")
            failed = True
            continue
        failed = failed or job.status != SUCCEEDED
        detail = job.output_path if job.status == SUCCEEDED else job.error
        table.add_row(key.ref.name, job.status, detail or "")
    console.print(table)
    if failed:
        raise typer.Exit(1)


# status ------------------------------------------------------------------------
@app.command()
def status(
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON with stable keys (one object per refresh).")
    ] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.2)] = 2.0,
) -> None:
    """Queue by pipeline, the last minute's throughput, running jobs and the daemons."""
    from worker.status import watch_status

    settings = _settings()
    watch_status(settings, _store(settings), console, as_json=as_json, watch=watch,
                 interval=interval)  # fmt: skip


# jobs --------------------------------------------------------------------------
@jobs_app.command("list")
def jobs_list(
    status_filter: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", "-p")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 50,
) -> None:
    """The newest jobs."""
    store = _store(_settings())
    table = Table("id", "pipeline", "status", "attempts", "source", "created", "error")
    for job in store.list_jobs(status=status_filter, pipeline=pipeline, limit=limit):
        table.add_row(
            str(job.id), job.pipeline, job.status, str(job.attempts),
            job.source_path or job.source, job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            (job.error or "")[:80],
        )  # fmt: skip
    console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: int) -> None:
    """Every column of one job."""
    store = _store(_settings())
    job = store.get(job_id)
    if job is None:
        raise _fatal(f"no job {job_id}", 1)
    table = Table("column", "value", show_header=False)
    for column in job.__table__.columns:
        table.add_row(column.name, str(getattr(job, column.key)))
    console.print(table)


@jobs_app.command("retry")
def jobs_retry(job_id: int) -> None:
    """Queue a failed, dead or cancelled job again."""
    from worker.submit import restore_original

    settings = _settings()
    store = _store(settings)
    job = store.get(job_id)
    if job is None:
        raise _fatal(f"no job {job_id}", 1)
    restored = restore_original(settings, job)
    if restored is not None:
        console.print(f"original moved back to {restored}; it runs as a new file job")
        return
    if not store.retry(job_id):
        raise _fatal(f"job {job_id} is {job.status}; only failed, dead or cancelled jobs retry", 1)
    console.print(f"job {job_id} queued again")


@jobs_app.command("cancel")
def jobs_cancel(job_id: int) -> None:
    """Cancel a queued or running job."""
    store = _store(_settings())
    if not store.cancel(job_id):
        raise _fatal(f"job {job_id} is not queued or running", 1)
    console.print(f"job {job_id} cancelled")


# schedules -----------------------------------------------------------------------
@app.command()
def schedules(
    count: Annotated[int, typer.Option("--next", "-n", help="How many next fire times.")] = 3,
) -> None:
    """Scheduled pipelines: their next fire times, the last fire and its outcome."""
    from worker.pipelines import load_pipelines
    from worker.schedule_report import schedules_table
    from worker.schedule_store import FireStore
    from worker.store import utcnow

    settings = _settings()
    try:
        pipelines = load_pipelines(settings.pipelines_dir)
    except PipelineError as exc:
        raise _fatal(str(exc), 2) from None
    store = _store(settings)
    if not any(p.schedule for p in pipelines.values()):
        console.print("no scheduled pipelines")
        return
    console.print(schedules_table(pipelines, FireStore(store.engine), utcnow(), count))


# pipelines, db, model -------------------------------------------------------------
@pipelines_app.command("list")
def pipelines_list() -> None:
    """The pipelines and what they do."""
    from worker.pipelines import load_pipelines

    settings = _settings()
    try:
        pipelines = load_pipelines(settings.pipelines_dir)
    except PipelineError as exc:
        raise _fatal(str(exc), 2) from None
    table = Table("name", "output", "max_tokens", "model", "description")
    for p in pipelines.values():
        table.add_row(p.name, p.output_format, str(p.generation.max_tokens),
                      p.model or settings.model, p.description)  # fmt: skip
    console.print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations."""
    from worker.daemon import make_engine_label

    settings = _settings()
    _store(settings, migrate=True)
    console.print(f"database at {make_engine_label(settings.resolved_database_url)} is up to date")


@model_app.command("prepare")
def model_prepare() -> None:
    """Assemble the built-in Gemma 3 270M GGUF into the models folder (no network)."""
    from worker.engine.model_files import prepare_default_model

    path = prepare_default_model(_settings())
    console.print(f"model ready: {path}")


@model_app.command("info")
def model_info() -> None:
    """Path, size, sha256, architecture and trained context length of the model."""
    from worker.daemon import engine_options, open_engine
    from worker.engine.model_files import resolve_model, sha256_file

    settings = _settings()
    try:
        model = resolve_model(settings)
        engine = open_engine(settings, model)
    except ModelError as exc:
        raise _fatal(str(exc), 3) from None
    meta = engine.metadata
    arch = meta.get("general.architecture", "?")
    options = engine_options(settings)
    rows = {
        "name": model.name,
        "path": str(model.path),
        "size": f"{model.path.stat().st_size:,} bytes",
        "sha256": sha256_file(model.path),
        "architecture": arch,
        "trained context length": meta.get(f"{arch}.context_length", "?"),
        "n_ctx (in effect)": str(options.n_ctx),
        "n_threads (in effect)": str(options.n_threads or os.cpu_count()),
        "n_gpu_layers": str(options.n_gpu_layers),
        "parallel (slots)": str(engine.parallel),
        "n_batch / n_ubatch": f"{settings.n_batch} / {settings.n_ubatch}",
        "n_threads_batch": str(settings.n_threads_batch or options.n_threads or os.cpu_count()),
        "batch_invariant": str(settings.batch_invariant).lower(),
        "KV cache (all slots)": f"{engine.n_ctx * engine.parallel} tokens",
        "load time": f"{engine.load_seconds:.2f} s",
    }
    engine.close()
    table = Table("", "", show_header=False)
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)


def _register_feature_commands() -> None:
    from worker.cli_batch import batch_app
    from worker.cli_pipelines import try_pipeline, validate

    app.add_typer(batch_app, name="batch")
    pipelines_app.command("validate")(validate)
    pipelines_app.command("try")(try_pipeline)


_register_feature_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
