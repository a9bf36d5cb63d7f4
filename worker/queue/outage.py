"""Database outages: which driver errors mean "the database is not answering" (the store
turns them into one `DatabaseUnavailable`), how long to wait before the next try, and
logging each outage once (when it starts and when it ends)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from worker import liveness
from worker.logs import event

# SQLite "database is locked" after busy_timeout, PostgreSQL restarting or unreachable,
# an exhausted connection pool. Other database errors are bugs, not outages.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeoutError)

BACKOFF_BASE_SECONDS = 0.5
P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)


class DatabaseUnavailable(Exception):
    """The database did not answer (locked past the busy timeout, restarting, unreachable).

    The only database error callers handle: wait and try again. Anything else a driver
    raises is a bug and propagates as it is.
    """


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    @wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        # A call beats the caller's heartbeat as it starts and as it ends, whatever its
        # end: calls in a row through an outage (each waits out a bounded timeout, for a
        # pooled connection or a lock) are each one wait, never a stall added up.
        liveness.beat()
        try:
            return method(*args, **kwargs)
        except OUTAGE_ERRORS as exc:
            first = (str(exc).splitlines() or [repr(exc)])[0][:500]
            raise DatabaseUnavailable(first) from exc
        finally:
            liveness.beat()

    return call


def translate_outages(cls: C) -> C:
    """Class decorator: every method of `cls` raises DatabaseUnavailable for outage errors."""
    for name, value in list(vars(cls).items()):
        if callable(value) and not name.startswith("__") and not isinstance(value, type):
            setattr(cls, name, _translated(value))
    return cls


BACKOFF_MAX_SECONDS = 15.0


def backoff_seconds(
    failures: int,
    base: float = BACKOFF_BASE_SECONDS,
    ceiling: float = BACKOFF_MAX_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Wait before try `failures + 1`: doubling from `base` up to `ceiling`, with jitter so
    that several daemons do not hammer a recovering database in step."""
    top = min(ceiling, base * 2 ** min(max(failures - 1, 0), 30))  # no float overflow
    return (rng or random).uniform(top / 2, top)


class Outage:
    """One component's view of the database: logs `down_event` once when calls start failing
    and `up_event` once when one succeeds again."""

    def __init__(self, down_event: str, up_event: str) -> None:
        self.down_event = down_event
        self.up_event = up_event
        self.failures = 0
        self.since: float | None = None
        # Several threads may share one view (the dispatcher and the slots' recorder).
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failed call; returns how long to wait before trying again."""
        with self._lock:
            self.failures += 1
            failures, first = self.failures, self.since is None
            if first:
                self.since = time.monotonic()
        if first:
            event(
                self.down_event,
                logging.ERROR,
                error=(str(exc).splitlines() or [repr(exc)])[0][:500],
            )
        return backoff_seconds(failures)

    def ok(self) -> None:
        """Record a successful call."""
        with self._lock:
            since, failures = self.since, self.failures
            self.since = None
            self.failures = 0
        if since is not None:
            event(
                self.up_event,
                down_seconds=round(time.monotonic() - since, 1),
                failed_calls=failures,
            )
