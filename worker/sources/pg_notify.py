"""LISTEN for new jobs on PostgreSQL and wake the runner at once.

Migration 0002 makes every insert of a queued job (and every job put back to
`queued`) send `NOTIFY edge_worker_jobs, '<pipeline>'`. This thread holds one
dedicated psycopg connection in autocommit mode, LISTENs on that channel and sets
the runner's wake event for each notification, so an idle daemon claims a new row
within milliseconds instead of at its next poll. The connection is separate from
SQLAlchemy's pool on purpose: a pooled connection may be handed to someone else,
reset or closed, and a LISTEN only lives as long as its session.

The runner keeps polling every `poll_interval` as a safety net (jobs whose
`run_after` lies in the future send no notification when they become due).
If the server restarts, the listener reconnects with exponential backoff and wakes
the runner once connected, to catch up with rows inserted while it was away.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from worker.logs import event

if TYPE_CHECKING:
    import psycopg

CHANNEL = "edge_worker_jobs"
APPLICATION_NAME = "edge-worker-listen"
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
# How often the notification loop looks at the stop flag.
STOP_CHECK_SECONDS = 1.0


def next_backoff(current: float) -> float:
    """The pause after a failed connect: doubling from BACKOFF_START, at most BACKOFF_MAX."""
    return min(max(current * 2, BACKOFF_START), BACKOFF_MAX)


def libpq_conninfo(sqlalchemy_url: str) -> str:
    """A libpq URI for psycopg from a SQLAlchemy URL (`postgresql+psycopg://...`)."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PgListener:
    """A daemon thread that turns NOTIFY edge_worker_jobs into `wake.set()`."""

    def __init__(self, url: str, wake: threading.Event) -> None:
        self.conninfo = libpq_conninfo(url)
        self.wake = wake
        self.notifications = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pg-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop within about STOP_CHECK_SECONDS; the connection is closed by the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_CHECK_SECONDS + 5)

    def _loop(self) -> None:
        import psycopg

        backoff = 0.0
        lost = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self.conninfo,
                    autocommit=True,
                    application_name=APPLICATION_NAME,
                    connect_timeout=10,
                    # A server that vanished without closing the socket (a network cut)
                    # is noticed within about 25 s by TCP keepalives.
                    keepalives=1,
                    keepalives_idle=10,
                    keepalives_interval=5,
                    keepalives_count=3,
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    event("db.listening", channel=CHANNEL, reconnected=lost)
                    backoff, lost = 0.0, False
                    self.wake.set()  # rows inserted while we were not listening
                    self._relay(conn)
            except psycopg.Error as exc:
                if not lost:  # log once per outage
                    event("db.listen_lost", logging.WARNING, error=str(exc).strip())
                    lost = True
                backoff = next_backoff(backoff)
                self._stop.wait(backoff)

    def _relay(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            # Returns after the timeout even when nothing arrived, to see the stop flag.
            for _notify in conn.notifies(timeout=STOP_CHECK_SECONDS):
                self.notifications += 1
                self.wake.set()


def start_listener(url: str, wake: threading.Event) -> PgListener | None:
    """Start a listener for a PostgreSQL `url`; None for other databases (they poll)."""
    if make_url(url).get_backend_name() != "postgresql":
        return None
    listener = PgListener(url, wake)
    listener.start()
    return listener
