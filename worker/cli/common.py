"""What every command needs: the settings, the job store, and error exits.

Exit codes: 1 a job or batch did not succeed (or was not found), 2 bad configuration,
pipeline or argument, 3 the model cannot be loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from worker.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
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
