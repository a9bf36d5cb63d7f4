"""Running Alembic migrations from code (`edge-worker db upgrade|downgrade|current`,
daemon start-up)."""

from __future__ import annotations

import logging
import time
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from worker.logs import event
from worker.queue.database import make_db_engine
from worker.queue.outage import OUTAGE_ERRORS, backoff_seconds

# Package data: found the same way in a checkout, an editable install and a wheel.
MIGRATIONS_DIR = Path(str(files("worker.queue") / "migrations"))


class MigrationError(Exception):
    """A revision that this version's migrations do not know, or a downgrade alembic refused."""


def alembic_config(url: str) -> Config:
    """An Alembic Config for `url` that needs no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (default: the newest).

    A database already at the newest revision is left alone without taking the
    migration lock: on PostgreSQL that lock is an advisory key any role that can connect
    could hold, and a daemon restarting on an up-to-date schema must not wait on it.
    """
    if revision == "head" and current(url) == head():
        return
    command.upgrade(alembic_config(url), revision)


def head() -> str | None:
    """The newest revision this version ships."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def upgrade_when_reachable(url: str, within: float, revision: str = "head") -> None:
    """`upgrade`, retried with backoff while the database is unreachable (a server still
    starting, a network not yet up), for at most `within` seconds; then the last error.

    Bounded so that start-up fails inside systemd's TimeoutStartSec with a clear message
    instead of being killed mid-wait.
    """
    deadline = time.monotonic() + within
    failures = 0
    while True:
        try:
            upgrade(url, revision)
            return
        except OUTAGE_ERRORS as exc:
            failures += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            wait = min(left, backoff_seconds(failures))
            event(
                "db.upgrade_retry",
                logging.WARNING,
                error=(str(exc).splitlines() or [repr(exc)])[0][:300],
                retry_in=round(wait, 1),
            )
            time.sleep(wait)


def downgrade(url: str, revision: str) -> None:
    """Take the database at `url` back to `revision` ("base": before the first migration).

    Only revisions this version ships are accepted: a downgrade must run with the code
    that holds the newer migrations, before the older code is installed.
    """
    config = alembic_config(url)
    if revision != "base":
        known = revisions()
        if revision not in known:
            raise MigrationError(
                f"unknown revision {revision!r}; this version knows {', '.join(known)} and base"
            )
    command.downgrade(config, revision)


def current(url: str) -> str | None:
    """The revision the database at `url` is at (None: not migrated at all)."""
    engine = make_db_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def revisions() -> list[str]:
    """Every revision this version ships, oldest first."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def check(url: str) -> None:
    """Raise if the models and the migrations disagree (`alembic check`)."""
    command.check(alembic_config(url))
