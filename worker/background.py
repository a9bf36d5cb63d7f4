"""Background loops: one small base for every thread of the daemon that repeats a step.

A loop's thread calls `step()` every `interval` seconds until `stop()`. Its heartbeat
(`worker.liveness`) is busy while a step runs, so a step that hangs (a blocked read, a
stuck database call) shows as `stalled()` and the systemd watchdog stops being fed; a
step that waits on something bounded may `liveness.beat()` to say it is still alive. A
step that raises `DatabaseUnavailable` waits out the outage with backoff; any other
exception escaping a step ends the loop and is reported through `on_death`, which
stops the daemon with a non-zero exit (systemd restarts it) instead of running on
without the loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from worker import liveness
from worker.logs import event
from worker.queue.outage import DatabaseUnavailable, Outage

log = logging.getLogger(__name__)


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
        self.heartbeat: liveness.Heartbeat | None = None
        self.liveness = liveness.LIVENESS
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
        if self.heartbeat is None:
            limit = float("inf") if self.stall_after is None else self.stall_after
            self.heartbeat = self.liveness.register(self.name, limit)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end, wait up to `timeout` for it, then run `after_stop`."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.heartbeat is not None:
            self.liveness.unregister(self.heartbeat)
            self.heartbeat = None
        self.after_stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if the loop was asked to stop meanwhile."""
        return self._stop.wait(seconds)

    def stalled(self) -> bool:
        """Whether the current step has gone without a beat for longer than `stall_after`."""
        heartbeat = self.heartbeat
        return heartbeat is not None and heartbeat.stalled()

    def _run(self) -> None:
        prefix = self.event_prefix or self.name
        outage = Outage(f"{prefix}.db_unavailable", f"{prefix}.db_recovered")
        delay: float | None = 0.0
        heartbeat = self.heartbeat
        liveness.bind(heartbeat)
        try:
            while not self._stop.wait(self.interval if delay is None else delay):
                if heartbeat is not None:
                    heartbeat.busy()
                try:
                    delay = self.step()
                except DatabaseUnavailable as exc:
                    delay = outage.failed(exc)
                else:
                    outage.ok()
                finally:
                    if heartbeat is not None:
                        heartbeat.idle()
        except BaseException as exc:
            self.error = exc
            self.on_death(self, exc)


def _log_death(loop: BackgroundLoop, exc: BaseException) -> None:
    log.error("%s stopped", loop.name, exc_info=exc)
    event("service.died", logging.ERROR, service=loop.name, error=f"{type(exc).__name__}: {exc}")
