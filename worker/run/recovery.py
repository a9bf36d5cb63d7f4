"""The recovery sweep: jobs whose daemon died go back to the queue, parents whose
children all finished while no one looked get gathered, and temp files of a process
killed mid-write are removed. Any daemon on the database does this every
`sweep_interval`.

A daemon is dead when its heartbeat in `workers` is older than `lease_seconds`, not
merely when a lease expired: after a database outage every lease has expired while
every daemon is alive. So after an outage of its own the sweep waits one lease period,
in which live daemons renew their leases and heartbeats, before it recovers anything;
and likewise after it starts: a daemon that starts right after an outage (or after a
long start of its own) cannot tell a live daemon whose heartbeats the outage held up
from a dead one. (Its own previous process's jobs need no wait: `requeue_suspects`.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from worker.background import BackgroundLoop
from worker.config import Settings
from worker.io.atomic import remove_stale_temps, remove_stale_temps_below
from worker.logs import event
from worker.queue.jobs import JobStore, RecoveredJob
from worker.queue.outage import DatabaseUnavailable
from worker.run.runner import JobObserver, NoObserver


class RecoverySweep(BackgroundLoop):
    """Requeues expired leases and wakes finished families, every `sweep_interval`."""

    name = "recovery"
    stall_after = 300.0

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        wake: threading.Event,
        observer: JobObserver | None = None,
        start_grace: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`start_grace`: seconds after the start before leases are recovered (None:
        `lease_seconds`); `monotonic`: the clock of that wait and of the temp sweep."""
        super().__init__()
        self.settings = settings
        self.store = store
        self.wake = wake
        self.interval = settings.sweep_interval
        self.observer: JobObserver = observer or NoObserver()
        self.start_grace = settings.lease_seconds if start_grace is None else start_grace
        self._monotonic = monotonic
        self._temps_swept_at = float("-inf")
        self._outage = False  # the last step could not reach the database
        # When recovery may run (on `monotonic`): one grace after the start, set again
        # by `before_start` (a sweep may be built a while before it starts).
        self._recover_after = monotonic() + self.start_grace

    def before_start(self) -> None:
        """One sweep before the dispatcher starts (families finished while no one looked,
        stale temp files); it recovers no lease yet (see the module's docstring)."""
        self._recover_after = self._monotonic() + self.start_grace
        if self.start_grace > 0:
            event("recovery.grace", seconds=self.start_grace, reason="start")
        try:
            self.step()
        except DatabaseUnavailable as exc:  # the loop keeps trying
            event("recovery.db_unavailable", logging.WARNING, error=str(exc))

    def step(self) -> float | None:
        try:
            recovered = self._recover()
            woken = self.store.wake_waiting()  # children finished while no one looked
        except DatabaseUnavailable:
            self._outage = True
            raise
        if self._outage:  # back after an outage: let live daemons renew before judging
            self._outage = False
            self._recover_after = self._monotonic() + self.settings.lease_seconds
            event("recovery.grace", seconds=self.settings.lease_seconds, reason="outage")
        for job in recovered:
            event("job.recovered", job_id=job.id, status=job.status)
        if recovered:
            self.observer.jobs_recovered(len(recovered))
        for parent in woken:
            event("job.gather_queued", job_id=parent)
        if recovered or woken:
            self.wake.set()
        if self._monotonic() - self._temps_swept_at >= self.settings.lease_seconds:
            # A temp file must be lease_seconds old to go: no need to look more often.
            self._temps_swept_at = self._monotonic()
            try:
                self._remove_stale_temps()
            except OSError as exc:  # not a database outage: log it and go on
                event("sweep.temp_failed", logging.WARNING, error=str(exc))
        return None

    def _recover(self) -> list[RecoveredJob]:
        if self._outage or self._monotonic() < self._recover_after:
            return []
        return self.store.recover_expired(
            stale_after=self.settings.lease_seconds, max_solo=self.settings.max_solo_crashes
        )

    def _remove_stale_temps(self) -> None:
        # Temp files of a process killed mid-write (this one's previous life, or another's).
        now = time.time()
        max_age = self.settings.lease_seconds
        failed = self.settings.data_dir / "failed"
        for folder in [p for p in failed.iterdir() if p.is_dir()] if failed.is_dir() else []:
            for path in remove_stale_temps(folder, max_age, now):
                event("sweep.temp_removed", path=str(path))
        # Outputs lie deeper: outbox/<pipeline>/<uid>/ (outputs_per_submitter) and the
        # folders of swept files' outputs (worker.sources.sweep.output_subfolder).
        outbox = self.settings.data_dir / "outbox"
        tops = [p for p in outbox.iterdir() if p.is_dir()] if outbox.is_dir() else []
        removed, cut_short = remove_stale_temps_below(
            tops, max_age, now, self.settings.sweep_max_entries, self.settings.sweep_max_seconds
        )
        for path in removed:
            event("sweep.temp_removed", path=str(path))
        if cut_short:
            event(
                "sweep.temp_truncated",
                logging.WARNING,
                max_entries=self.settings.sweep_max_entries,
                max_seconds=self.settings.sweep_max_seconds,
            )
