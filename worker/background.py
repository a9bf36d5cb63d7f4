"""Background loops: one small base for every thread of the daemon that repeats a step.

A loop's thread calls `step()` every `interval` seconds until `stop()`. It records when
each step began and ended, so a step that hangs (a blocked read, a stuck database call)
shows as `stalled()` and the systemd watchdog stops being fed. A step that raises
`DatabaseUnavailable` waits out the outage with backoff; any other exception escaping a
step ends the loop and is reported through `on_death`, which stops the daemon with a
non-zero exit (systemd restarts it) instead of running on without the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from worker.logs import event
from worker.queue.outage import DatabaseUnavailable, Outage

log = logging.getLogger(__name__)


class Progress:
    """A timestamp that work touches and the watchdog reads."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def touch(self) -> None:
        self.at = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.at


class BackgroundLoop:
    """A named thread that runs `step()` every `interval` seconds until stopped."""

    name = "loop"
    # Outages are logged as `<event_prefix>.db_unavailable` / `.db_recovered`.
    event_prefix: str | None = None
    interval = 1.0
    # A step still running after this many seconds counts as stalled (None: never).
    stall_after: float | None = None

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._step_started: float | None = None
        self.error: BaseException | None = None
        self.on_death: Callable[[BackgroundLoop, BaseException], None] = _log_death

    # Subclasses ------------------------------------------------------------------
    def step(self) -> float | None:
        """One round of work; may return the delay before the next one."""
        raise NotImplementedError

    def before_start(self) -> None:
        """Runs in the caller's thread before the loop's thread starts (may raise)."""

    def after_stop(self) -> None:
        """Runs in the caller's thread after the loop's thread ended."""

    # Life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Run `before_start`, then the loop in its own thread."""
        self._stop.clear()
        self.before_start()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end, wait up to `timeout` for it, then run `after_stop`."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.after_stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if the loop was asked to stop meanwhile."""
        return self._stop.wait(seconds)

    def stalled(self) -> bool:
        """Whether the current step has run longer than `stall_after`."""
        started = self._step_started
        limit = self.stall_after
        return limit is not None and started is not None and time.monotonic() - started > limit

    def _run(self) -> None:
        prefix = self.event_prefix or self.name
        outage = Outage(f"{prefix}.db_unavailable", f"{prefix}.db_recovered")
        delay: float | None = 0.0
        try:
            while not self._stop.wait(self.interval if delay is None else delay):
                self._step_started = time.monotonic()
                try:
                    delay = self.step()
                except DatabaseUnavailable as exc:
                    delay = outage.failed(exc)
                else:
                    outage.ok()
                finally:
                    self._step_started = None
        except BaseException as exc:
            self.error = exc
            self.on_death(self, exc)


def _log_death(loop: BackgroundLoop, exc: BaseException) -> None:
    log.error("%s stopped", loop.name, exc_info=exc)
    event("service.died", logging.ERROR, service=loop.name, error=f"{type(exc).__name__}: {exc}")
