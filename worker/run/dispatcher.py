"""The dispatcher: one per daemon. It waits for a wake-up (PostgreSQL NOTIFY, the
watcher, a slot coming free) or the poll interval, claims as many jobs as there are
free slots in one claim call, and hands them to the slots.

A job that was in flight when a worker died (a suspect) runs alone: while one is due,
the dispatcher claims nothing until its slots are idle, then claims that job only, and
nothing else until it is done. If it crashes the worker then, it is the cause
(`queue.outcomes.crash_outcome`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping

from worker import liveness
from worker.config import Settings
from worker.logs import event
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob, JobStore
from worker.queue.outage import DatabaseUnavailable, Outage
from worker.run.routing import ClaimArgs, ModelRouter
from worker.run.slots import SlotPool
from worker.run.stop import StopFlags

# A job with this many crashes is a suspect: it runs alone.
SUSPECT_AFTER_CRASHES = 1
# After a hard stop the slots end within a decode call: wait this long for them.
HARD_STOP_JOIN_SECONDS = 5.0


class Dispatcher:
    """Claims jobs for free slots until stopped (or, with `once`, until nothing is left)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        pipelines: Mapping[str, Pipeline],
        worker_id: str,
        run_job: Callable[[ClaimedJob], None],
        stop: StopFlags,
        wake: threading.Event,
        outage: Outage | None = None,
        registry: liveness.Liveness = liveness.LIVENESS,
        router: ModelRouter | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pipelines = pipelines
        self.worker_id = worker_id
        self.stop = stop
        self.wake = wake
        self.registry = registry
        self.heartbeat: liveness.Heartbeat | None = None
        # Shared with the recorder: one `db.unavailable` per outage, whoever saw it first.
        self.outage = outage or Outage("db.unavailable", "db.recovered")
        self._crashed: list[BaseException] = []
        self._run_job = run_job
        self._solo = False  # a job that must run alone is in hand
        self._solo_pending = False  # one waits (last looked up at _solo_checked_at)
        self._solo_checked_at = float("-inf")
        # Pipelines whose intake an operator paused (worker.pipelines.pauses): not claimed.
        self.paused: Callable[[], Collection[str]] = frozenset
        # Issue #19: which jobs this daemon can run (its models, its files), model by model.
        self.router = router
        self.slots = self._new_slots()
        # False once a slot outlived the shutdown timeout: it may still be inside llama.cpp,
        # so the engines must not be freed under it (ModelManager.leave_engines_to_exit).
        self.slots_finished = True

    def _new_slots(self) -> SlotPool:
        size = self.router.slots if self.router is not None else max(1, self.settings.parallel)
        return SlotPool(
            size,
            self._run_job,
            self.wake.set,
            self._slot_crashed,
            self.settings.stall_seconds,
            self.registry,
        )

    def _slot_crashed(self, exc: BaseException) -> None:
        self._crashed.append(exc)
        self.stop.soft.set()
        self.stop.hard.set()
        self.wake.set()

    def run(self, once: bool = False, inputs_pending: Callable[[], int] = lambda: 0) -> None:
        """Claim and hand out jobs until a stop is requested (`once`: until drained).

        Returns after every slot finished its job; re-raises a slot's crash.
        """
        if self.slots.started:
            self.slots = self._new_slots()
        self.slots.start()
        heartbeat = self.heartbeat = self.registry.register(
            "dispatcher", self.settings.stall_seconds
        )
        outer = liveness.current()
        liveness.bind(heartbeat)  # the store's calls in a round beat it
        try:
            while not self.stop.soft.is_set():
                heartbeat.busy()
                going_on = self._dispatch(once, inputs_pending)
                heartbeat.idle()
                if not going_on:
                    break
        finally:
            liveness.bind(outer)
            self.registry.unregister(heartbeat)
            self._close_slots()
        if self._crashed:
            raise self._crashed[0]

    def _close_slots(self) -> None:
        """Let the slots finish within the shutdown timeout (after a hard stop, briefly)."""
        soft_at = self.stop.soft_at
        limit = self.settings.shutdown_timeout
        if soft_at is not None:
            limit = max(0.0, soft_at + limit - time.monotonic())
        if self.stop.hard.is_set():
            limit = min(limit, HARD_STOP_JOIN_SECONDS)
        if not self.slots.close(limit + HARD_STOP_JOIN_SECONDS):
            self.slots_finished = False
            event("slots.not_finished", logging.WARNING, seconds=round(limit, 1))

    def _dispatch(self, once: bool, inputs_pending: Callable[[], int]) -> bool:
        """One round; False when `once` finds nothing left to do."""
        busy = self.slots.busy()
        if self._solo and busy == 0:
            self._solo = False
        free = 0 if self._solo else self.slots.size - busy
        if free == 0:
            self._idle_wait(self.wake, self.settings.poll_interval)
            self.wake.clear()
            return True
        self.wake.clear()  # a wake-up from here on is not lost: the wait below sees it
        try:
            # Pipelines outside their run window wait, queued (README, "Schedules").
            now = self.store.clock()
            pipelines = dict(self.pipelines.items())  # one set for the round (reloads)
            closed = [n for n, p in pipelines.items() if not p.open_at(now)]
            closed += sorted(set(self.paused()) - set(closed))
            crashes = SUSPECT_AFTER_CRASHES
            limits = {n: p.max_concurrent for n, p in pipelines.items() if p.max_concurrent}
            # Drain for a job that must run alone; claim it once nothing else runs.
            solo = self._solo_waiting(crashes, closed)
            jobs = [] if solo and busy else self._claim(free, closed, crashes, solo, limits)
            self._solo = solo and bool(jobs)
            if self._solo:
                self._solo_pending = False
            self.outage.ok()
        except DatabaseUnavailable as exc:  # the database is not answering: wait, try again
            self._idle_wait(self.stop.soft, self.outage.failed(exc))
            return True
        for job in jobs:
            self.slots.submit(job)
        if jobs:
            return True
        if once and self._drained(inputs_pending, closed):
            return False
        self._idle_wait(self.wake, self.settings.poll_interval)
        return True

    def _idle_wait(self, flag: threading.Event, seconds: float) -> None:
        """Wait on `flag` for at most `seconds` with the heartbeat idle: waiting for work
        or for the database to come back (a backoff of up to BACKOFF_MAX_SECONDS) is not
        a step that can hang, and must not read as a stall to the watchdog."""
        heartbeat = self.heartbeat
        if heartbeat is not None:
            heartbeat.idle()
        try:
            flag.wait(seconds)
        finally:
            if heartbeat is not None:
                heartbeat.busy()

    def _claim(
        self, free: int, closed: list[str], crashes: int, solo: bool, limits: dict[str, int]
    ) -> list[ClaimedJob]:
        if self.router is not None:
            args = ClaimArgs(self.worker_id, self.settings.lease_seconds, closed, limits, crashes)
            return self.router.claim(free, args, solo)
        return self.store.claim(
            self.worker_id,
            free,
            self.settings.lease_seconds,
            exclude_pipelines=closed,
            max_crashes=crashes,
            solo=solo,
            limits=limits,
        )

    def _solo_waiting(self, crashes: int, closed: list[str]) -> bool:
        """Whether a job that must run alone waits. Only the recovery sweep makes such a
        job, every sweep_interval: looked up that often, not on every claim round."""
        now = time.monotonic()
        if self._solo_pending or now - self._solo_checked_at >= self.settings.sweep_interval:
            self._solo_checked_at = now
            if self.router is not None:
                self._solo_pending = self.router.solo_waiting(crashes, closed)
            else:
                self._solo_pending = self.store.solo_waiting(crashes, closed)
        return self._solo_pending

    def _drained(self, inputs_pending: Callable[[], int], closed: list[str]) -> bool:
        try:
            return (
                self.slots.busy() == 0
                and inputs_pending() == 0
                and not (
                    self.router.has_ready(closed)
                    if self.router is not None
                    else self.store.has_ready(closed)
                )
            )
        except DatabaseUnavailable:
            return False
