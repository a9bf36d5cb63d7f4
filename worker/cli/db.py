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
