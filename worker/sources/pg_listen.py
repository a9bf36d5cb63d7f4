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

Any role can NOTIFY any channel (PostgreSQL has no privilege for it), so a flood of
notifications must not become a flood of claim queries: wake-ups are coalesced
(`WakeCoalescer`). A notification after a quiet spell wakes the runner at once; more
close behind it make one wake-up at the end of a short window; a flood stretches the
window to `poll_interval`, so it costs at most one wake-up (one claim query) per
`poll_interval`, while a job inserted now and then is still claimed at once.
If the server restarts, the listener reconnects with exponential backoff and wakes
the runner once connected, to catch up with rows inserted while it was away.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from worker.background import BackgroundLoop
from worker.logs import event

if TYPE_CHECKING:
    import psycopg

CHANNEL = "edge_worker_jobs"
APPLICATION_NAME = "edge-worker-listen"
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
# How often the notification loop looks at the stop flag.
STOP_CHECK_SECONDS = 1.0
# Wake-ups closer together than this are coalesced (or `poll_interval`, if shorter).
SHORT_WINDOW_SECONDS = 0.5
# More notifications than this between two wake-ups is a flood: the window becomes the
# whole poll_interval. A bulk INSERT sends one per pipeline (PostgreSQL folds them).
FLOOD_COUNT = 20


def next_backoff(current: float) -> float:
    """The pause after a failed connect: doubling from BACKOFF_START, at most BACKOFF_MAX."""
    return min(max(current * 2, BACKOFF_START), BACKOFF_MAX)


def libpq_conninfo(sqlalchemy_url: str) -> str:
    """A libpq URI for psycopg from a SQLAlchemy URL (`postgresql+psycopg://...`)."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class WakeCoalescer:
    """Wake-ups from notifications, bounded (pure: the caller passes monotonic `now`).

    The first notification after a quiet spell wakes at once; more within the window only
    mark one wake-up due at its end. The window is short (at most SHORT_WINDOW_SECONDS,
    so sparse real jobs are claimed at once even with a long `poll_interval`) until more
    than FLOOD_COUNT notifications arrive between two wake-ups: then it is the whole
    `interval`, until a window passes quietly again. A flood therefore costs one wake-up
    (one claim query) per `interval`, after the first two.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.short = min(interval, SHORT_WINDOW_SECONDS)
        self._last = float("-inf")
        self._pending = False
        self._count = 0  # notifications since the last wake-up
        self._flooding = False

    def notified(self, now: float) -> bool:
        """A notification arrived: True if the runner is to be woken now."""
        self._count += 1
        if now - self._last >= self._window():
            return self._fire(now)
        self._pending = True
        return False

    def due(self, now: float) -> bool:
        """True (once) when a held-back wake-up is due now."""
        if self._pending and now - self._last >= self._window():
            return self._fire(now)
        return False

    def wait_for(self, now: float, longest: float) -> float:
        """How long to wait for notifications before a held-back wake-up is due."""
        if not self._pending:
            return longest
        return max(0.0, min(longest, self._last + self._window() - now))

    @property
    def flooding(self) -> bool:
        return self._flooding

    def _window(self) -> float:
        return self.interval if self._flooding else self.short

    def _fire(self, now: float) -> bool:
        # What arrived since the last wake-up decides the next window.
        self._flooding = self._count > FLOOD_COUNT
        self._count, self._last, self._pending = 0, now, False
        return True


class PgListener(BackgroundLoop):
    """A background loop that turns NOTIFY edge_worker_jobs into `wake.set()`, at most
    once per `min_interval`."""

    name = "pg-listen"

    def __init__(self, url: str, wake: threading.Event, min_interval: float = 0.5) -> None:
        super().__init__()
        self.conninfo = libpq_conninfo(url)
        self.wake = wake
        self.coalescer = WakeCoalescer(min_interval)
        self.notifications = 0
        self.wakeups = 0
        self._backoff = 0.0
        self._lost = False

    def step(self) -> float | None:
        """One LISTEN session, until stopped or the connection is lost."""
        import psycopg

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
                event("db.listening", channel=CHANNEL, reconnected=self._lost)
                self._backoff, self._lost = 0.0, False
                self.wake.set()  # rows inserted while we were not listening
                self._relay(conn)
        except psycopg.Error as exc:
            if not self._lost:  # log once per outage
                event("db.listen_lost", logging.WARNING, error=str(exc).strip())
                self._lost = True
            self._backoff = next_backoff(self._backoff)
            return self._backoff
        return 0.0

    def _relay(self, conn: psycopg.Connection[Any]) -> None:
        coalescer = self.coalescer
        while not self.stopping:
            # Returns after the timeout even when nothing arrived, to see the stop flag
            # and to deliver a held-back wake-up.
            wait = coalescer.wait_for(time.monotonic(), STOP_CHECK_SECONDS)
            for _notify in conn.notifies(timeout=wait):
                self.notifications += 1
                if coalescer.notified(time.monotonic()):
                    self._wake()
                if self.stopping:
                    break
            if coalescer.due(time.monotonic()):
                self._wake()

    def _wake(self) -> None:
        self.wakeups += 1
        self.wake.set()


def listener_for(url: str, wake: threading.Event, min_interval: float = 0.5) -> PgListener | None:
    """A listener for a PostgreSQL `url` that wakes at most once per `min_interval`
    (the daemon's `poll_interval`); None for other databases (they poll)."""
    if make_url(url).get_backend_name() != "postgresql":
        return None
    return PgListener(url, wake, min_interval)
