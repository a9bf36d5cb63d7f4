"""Creating SQLAlchemy database engines with the settings each backend needs for a job queue."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

from worker import liveness

# Re-exported: callers read the busy timeout here, beside the engine that sets it.
from worker.config import SQLITE_BUSY_TIMEOUT_MS as SQLITE_BUSY_TIMEOUT_MS

if TYPE_CHECKING:
    from worker.config import Settings


@dataclass(frozen=True)
class DbTimeouts:
    """Bounds on every wait for PostgreSQL, in seconds (0: no limit for the statement and
    lock timeouts). A silent network drop is noticed by TCP keepalives and the TCP user
    timeout within about `connect` seconds."""

    connect: float = 10.0
    statement: float = 60.0
    lock: float = 15.0


def timeouts_of(settings: Settings) -> DbTimeouts:
    """The database timeouts `settings` set."""
    return DbTimeouts(
        settings.db_connect_timeout, settings.db_statement_timeout, settings.db_lock_timeout
    )


def _postgres_connect_args(timeouts: DbTimeouts) -> dict[str, Any]:
    options = [
        f"-c statement_timeout={int(timeouts.statement * 1000)}",
        f"-c lock_timeout={int(timeouts.lock * 1000)}",
        # A transaction left open by a client that vanished does not hold locks forever.
        "-c idle_in_transaction_session_timeout=300000",
    ]
    probe = max(1, int(timeouts.connect // 4))
    return {
        "connect_timeout": max(1, round(timeouts.connect)),
        "options": " ".join(options),
        # A server that vanished without closing the socket (a network cut) is noticed
        # while we wait for an answer: keepalive probes go unanswered, and unacknowledged
        # writes give up after tcp_user_timeout.
        "keepalives": 1,
        "keepalives_idle": probe,
        "keepalives_interval": probe,
        "keepalives_count": 3,
        "tcp_user_timeout": int(timeouts.connect * 1000),
    }


def make_db_engine(url: str, timeouts: DbTimeouts | None = None, **kwargs: Any) -> Engine:
    """An engine for `url`. PostgreSQL gets `timeouts` on every connection (default:
    `DbTimeouts()`); SQLite gets WAL, a busy timeout and `BEGIN IMMEDIATE` transactions."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        bounds = timeouts or DbTimeouts()
        if parsed.get_backend_name() == "postgresql":
            args = {**_postgres_connect_args(bounds), **kwargs.pop("connect_args", {})}
            kwargs["connect_args"] = args
            kwargs.setdefault("pool_timeout", bounds.connect)
        return beating(create_engine(url, pool_pre_ping=True, **kwargs))

    busy = SQLITE_BUSY_TIMEOUT_MS / 1000
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    dialect: Any = parsed.get_dialect()  # pysqlite's picks the pool by the URL
    pool = kwargs.get("poolclass") or dialect.get_pool_class(parsed)
    if issubclass(pool, QueuePool):
        # A wait for a pooled connection (every one held by a call waiting out the lock)
        # is bounded like the lock wait itself, not by the pool's default 30 s. (A
        # database in memory has one connection per thread: no pool to wait for.)
        kwargs.setdefault("pool_timeout", busy)
    engine = create_engine(url, connect_args={"timeout": busy}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so that we can say BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # FULL: a committed state change survives a power cut, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: two claimers never both read the same queued row.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return beating(engine)


def beating(engine: Engine) -> Engine:
    """Beat the calling thread's heartbeat (`worker.liveness`) as each connection is
    made or checked out, as each statement starts and as each error comes back (and
    every store call beats as it starts and ends: `worker.queue.outage`).

    One statement waits at most its bound (SQLite's busy timeout; PostgreSQL's connect
    and statement timeouts), and the settings keep that under stall_seconds. A thread
    that makes several calls in a row through an outage (a read that fails, then the
    release that follows it) must not add those waits up into a stall: CI saw the
    watchdog stop pinging a daemon that only waited out a locked SQLite, a heartbeat
    silent for about two busy timeouts in a row.
    """

    def beat(*_args: Any, **_kwargs: Any) -> None:
        liveness.beat()

    event.listen(engine, "do_connect", beat)
    event.listen(engine, "checkout", beat)
    event.listen(engine, "before_cursor_execute", beat)
    event.listen(engine, "handle_error", beat)
    return engine


def database_label(url: str) -> str:
    """The database URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)
