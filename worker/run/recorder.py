"""Recording what happened after work is done, through database outages.

Once a job's output is published (or its failure decided), losing the record of it
would run the job again. So every write that follows (complete, fail, release, wake
the parent, set the archived path, update the batch) goes through `Recorder`, which
retries through `DatabaseUnavailable` until the write lands, and gives up only at
shutdown (a hard stop, or `shutdown_timeout` after the soft one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from worker import liveness
from worker.queue.outage import DatabaseUnavailable, Outage
from worker.run.stop import StopFlags

T = TypeVar("T")


class DatabaseGone(Exception):
    """The database stayed unavailable until shutdown; the outcome is not recorded."""


class Recorder:
    """Runs store calls until they succeed, waiting out outages (each logged once)."""

    def __init__(self, stop: StopFlags, shutdown_timeout: float) -> None:
        self.stop = stop
        self.shutdown_timeout = shutdown_timeout
        self.outage = Outage("db.unavailable", "db.recovered")

    def __call__(self, call: Callable[[], T]) -> T:
        """The result of `call()`; DatabaseGone if the database is away until shutdown."""
        while True:
            try:
                result = call()
            except DatabaseUnavailable as exc:
                delay = self.outage.failed(exc)
                if self._wait(delay) or self.past_shutdown_timeout():
                    raise DatabaseGone(str(exc)) from exc
                continue
            self.outage.ok()
            return result

    def _wait(self, seconds: float) -> bool:
        """Sleep `seconds`, beating the caller's heartbeat (waiting out an outage is not
        a hang); True if a hard stop came meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            liveness.beat()
            if self.stop.hard.wait(min(left, 1.0)):
                return True
        liveness.beat()
        return self.stop.hard.is_set()

    def past_shutdown_timeout(self) -> bool:
        """Whether the soft stop came more than `shutdown_timeout` seconds ago."""
        soft_at = self.stop.soft_at
        return soft_at is not None and time.monotonic() - soft_at > self.shutdown_timeout
