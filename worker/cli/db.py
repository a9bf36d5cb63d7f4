"""`edge-worker db ...`: the job database."""

from __future__ import annotations

from typing import Annotated

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


@db_app.command("current")
def db_current() -> None:
    """The database's migration revision and the newest one this version ships."""
    from worker.queue.migrate import current, revisions

    url = common.settings().resolved_database_url
    revision = current(url) or "base (not migrated)"
    common.console.print(f"database revision: {revision}", markup=False)
    common.console.print(f"this version ships: {', '.join(revisions())}", markup=False)


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[
        str, typer.Argument(metavar="REV", help='Revision to go back to, e.g. 0003 ("base": none).')
    ],
) -> None:
    """Undo the migrations after REV, with this version's code, before installing an older one.

    Stop every daemon on the database first. See "Rollback" in the README for what each
    migration's downgrade drops.
    """
    from worker.queue.database import database_label
    from worker.queue.migrate import MigrationError, current, downgrade

    url = common.settings().resolved_database_url
    try:
        downgrade(url, revision)
    except MigrationError as exc:
        raise common.fatal(str(exc), 2) from None
    label = database_label(url)
    now = current(url) or "base"
    common.console.print(f"database at {label} is at revision {now}", markup=False)


# `db grant-submitter` ------------------------------------------------------------------
@db_app.command("grant-submitter")
def db_grant_submitter(
    role: str,
    create: bool = typer.Option(
        True, "--create/--no-create", help="Create the role (NOLOGIN) if it does not exist."
    ),
) -> None:
    """PostgreSQL: let ROLE only submit jobs (INSERT pipeline, input_text, priority,
    idempotency_key) and read their status and results; no UPDATE, no DELETE."""
    from worker.cli.grants import GrantError, grant_submitter
    from worker.queue.database import make_db_engine

    settings = common.settings()
    common.open_store(settings, migrate=True)
    engine = make_db_engine(settings.resolved_database_url)
    try:
        created, statements = grant_submitter(engine, role, create)
    except GrantError as exc:
        raise common.fatal(str(exc), 2) from None
    finally:
        engine.dispose()
    for statement in statements:
        common.console.print(statement + ";", markup=False, highlight=False)
    if created:
        common.err.print(
            f"created role {role!r} (NOLOGIN): GRANT it to login roles, or "
            "ALTER ROLE ... LOGIN PASSWORD ...",
            markup=False,
            highlight=False,
        )
