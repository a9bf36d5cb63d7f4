"""What every command needs: the settings, the job store, and error exits.

Exit codes: 1 a job or batch did not succeed (or was not found), 2 bad configuration,
pipeline or argument, 3 the model cannot be loaded.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from worker.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from worker.io.submit import SubmittedFile
    from worker.pipelines.spec import Pipeline
    from worker.queue.jobs import JobStore

console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (or EDGE_WORKER_CONFIG)."),
]


class _State:
    config_path: Path | None = None


state = _State()


def settings() -> Settings:
    """The settings in effect for this command; exit 2 with the reason if they are invalid."""
    try:
        return load_settings(state.config_path)
    except ConfigError as exc:
        raise fatal(str(exc), 2) from None


def open_store(settings: Settings, migrate: bool = True) -> JobStore:
    """The job store of `settings`' database, migrated first unless told otherwise."""
    from worker.queue.database import make_db_engine
    from worker.queue.jobs import JobStore
    from worker.queue.migrate import upgrade

    url = settings.resolved_database_url
    if migrate:
        upgrade(url)
    return JobStore(make_db_engine(url))


def load_pipeline_set(settings: Settings) -> dict[str, Pipeline]:
    """The pipelines of `settings.pipelines_dir`; exit 2 naming the bad file and field."""
    from worker.pipelines.spec import PipelineError, load_pipelines

    try:
        return dict(load_pipelines(settings.pipelines_dir))
    except PipelineError as exc:
        raise fatal(f"invalid pipeline:\n{exc}", 2) from None


def fatal(message: str, code: int) -> typer.Exit:
    """Print `error: message` to stderr (the message as plain text) and return the exit."""
    err.print("[red]error:[/red] ", markup=True, highlight=False, end="")
    err.print(message, markup=False, highlight=False)
    return typer.Exit(code)


def write_json(data: object) -> None:
    """`data` as one JSON document on stdout (plain text, never Rich markup)."""
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def check_pipeline(settings: Settings, name: str, store: JobStore | None = None) -> None:
    """Exit 2 unless `name` is a configured pipeline (or, given `store`, one the job table
    still has jobs of: a pipeline removed since leaves its jobs behind)."""
    if store is not None and store.list_jobs(pipeline=name, limit=1):
        return
    known = load_pipeline_set(settings)
    if name not in known:
        raise fatal(f"unknown pipeline {name!r} (known: {', '.join(sorted(known))})", 2)


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 time (a date alone is midnight; no offset means UTC); exit 2 if invalid."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise fatal(
            f"{option}: {text!r} is not an ISO time, e.g. 2026-11-01T08:00:00Z", 2
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def enqueue_submitted(
    store: JobStore, submitted: SubmittedFile, priority: int, origin: str | None = None
) -> int:
    """Queue a file just copied into an inbox, under the key the watcher uses for it (so
    the watcher finds it queued and leaves it), with `priority`, tagged with the `origin`
    instance of that inbox; returns the job id."""
    from worker.queue.jobs import NewJob
    from worker.queue.models import JobKind

    ref = submitted.ref
    job = NewJob(
        ref.pipeline,
        source=JobKind.FILE,
        source_path=ref.source_path,
        idempotency_key=submitted.key,
        priority=priority,
        origin=origin,
    )
    job_id = store.enqueue(job)
    if job_id is not None:
        return job_id
    # The watcher was first (settle_seconds 0): give its job the priority asked for.
    existing = store.get_by_key(submitted.key)
    if existing is None:  # purged already: impossible for a file copied a moment ago
        raise fatal(f"the job of {ref.source_path} vanished", 1)
    if existing.priority != priority:
        store.set_priority(existing.id, priority)
    return existing.id
