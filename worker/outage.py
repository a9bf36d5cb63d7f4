"""Database outages: which errors mean "the database is not answering", how long to wait
before the next try, and logging each outage once (when it starts and when it ends)."""

from __future__ import annotations

import logging
import random
import time

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from worker.logs import event

# SQLite "database is locked" after busy_timeout, PostgreSQL restarting or unreachable,
# an exhausted connection pool. Other database errors are bugs, not outages.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeoutError)

BACKOFF_BASE_SECONDS = 0.5
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

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failed call; returns how long to wait before trying again."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            event(
                self.down_event,
                logging.ERROR,
                error=(str(exc).splitlines() or [repr(exc)])[0][:500],
            )
        return backoff_seconds(self.failures)

    def ok(self) -> None:
        """Record a successful call."""
        if self.since is not None:
            event(self.up_event, down_seconds=round(time.monotonic() - self.since, 1),
                  failed_calls=self.failures)  # fmt: skip
        self.since = None
        self.failures = 0
