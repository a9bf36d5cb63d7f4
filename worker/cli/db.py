"""`edge-worker db ...`: the job database."""

from __future__ import annotations

import typer

from worker.cli import common

db_app = typer.Typer(help="The job database.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations."""
    from worker.queue.database import database_label

    settings = common.settings()
    common.open_store(settings, migrate=True)
    label = database_label(settings.resolved_database_url)
    common.console.print(f"database at {label} is up to date", markup=False)
