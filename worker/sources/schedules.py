"""Schedules: APScheduler fires a pipeline's cron; a fire only records itself and enqueues.

A fire never runs inference: it claims the fire in `schedule_fires` (unique per
pipeline and fire time, so among daemons sharing a database exactly one acts on
it), enqueues the pipeline's sweep and/or its waiting inbox, and wakes the runner.
At start-up, the newest fire missed while no daemon ran is made once, if it is
within the pipeline's `misfire_grace`.

Each fire runs in a thread of its own, one at a time per pipeline; APScheduler's own
threads only start them, so they never wait on a fire. A fire still running when the
next one is due makes that one skip, logged (`schedule.fire_skipped`, or
`schedule.fire_hung` past `fire_stall_after`), and a fire running past it shows as
`stalled()` (the watchdog stops, systemd restarts the daemon). Hung is judged by
progress, not by the fire's whole length: each phase (the sweep walk, the waiting inbox)
has its own budget of `sweep_max_seconds`, and the clock restarts at each phase, so a
fire that does both, or takes a big inbox backlog, is not mistaken for a hung one. The
start-up catch-up
runs in such a thread too, after the service started (READY is not held up by a big
sweep), retrying through a database outage. A reload swaps the APScheduler of the new
pipelines in for the old one without touching the database: a database blip cannot
turn schedules off, and a reload never waits on a fire.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.background import BackgroundLoop
from worker.config import Settings
from worker.logs import event
from worker.pipelines.schedule_time import cron_trigger, latest_fire, missed_fire, next_fires
from worker.pipelines.spec import Pipeline
from worker.queue.fires import FireStore
from worker.queue.jobs import JobStore
from worker.queue.outage import DatabaseUnavailable, Outage
from worker.sources.sweep import Sweeper

log = logging.getLogger(__name__)

# How late APScheduler may start a fire before it drops it (the process was stalled);
# also how far back a fire's own time is looked up when it runs.
LATE_FIRE_SECONDS = 30
# At stop, how long to wait for fires in progress to finish enqueueing.
STOP_WAIT_SECONDS = 10.0
# A fire's phase (its sweep, its inbox) may work for sweep_max_seconds; a fire that made
# no progress (finished no phase) for that plus this margin is hung.
STALL_MARGIN_SECONDS = 120.0


@dataclass(frozen=True)
class RunningFire:
    """A fire in progress: its pipeline, its time, when it began and when it last made
    progress (began its current phase; monotonic)."""

    pipeline: str
    fire_time: datetime | None  # None: the start-up catch-up, time not known yet
    started: float
    thread: threading.Thread
    progressed: float = 0.0

    def idle_seconds(self, now: float) -> float:
        """Seconds since the fire last made progress."""
        return now - max(self.started, self.progressed)


class Scheduler(BackgroundLoop):
    """One cron trigger per scheduled pipeline, run by an APScheduler BackgroundScheduler;
    the loop itself watches the fires in progress and reports hung ones."""

    name = "scheduler"
    interval = 5.0

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        pipelines: Mapping[str, Pipeline],
        worker_id: str,
        enqueue_inbox: Callable[[str], list[int]],
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self.store = store
        self.fires = FireStore(store.db, clock=store.clock)
        self.sweeper = Sweeper(settings, store)
        self.fire_stall_after = settings.sweep_max_seconds + STALL_MARGIN_SECONDS
        self._use(pipelines)
        self.worker_id = worker_id
        self.enqueue_inbox = enqueue_inbox
        self.on_enqueued = on_enqueued
        self._scheduler: Any = None
        self._started = False  # the service is on (firing, when there are schedules)
        self._reported: set[int] = set()  # hung fires already logged (thread idents)
        self._lock = threading.Lock()
        self._running: dict[str, RunningFire] = {}  # one fire at a time per pipeline
        self._catch_up: threading.Thread | None = None

    def _use(self, pipelines: Mapping[str, Pipeline]) -> None:
        self.pipelines = {name: p for name, p in pipelines.items() if p.schedule is not None}
        self.triggers: dict[str, Any] = {
            name: cron_trigger(p.schedule, p.timezone)
            for name, p in self.pipelines.items()
            if p.schedule is not None
        }

    def reload(self, pipelines: Mapping[str, Pipeline]) -> None:
        """Fire on the schedules of `pipelines` from now on (a reload): also schedules added
        to a daemon that had none. The new schedules start before the old ones stop, and
        nothing here touches the database: if anything fails, the old ones keep firing."""
        old_pipelines, old_triggers, old_scheduler = self.pipelines, self.triggers, self._scheduler
        self._use(pipelines)
        try:
            self._scheduler = self._new_scheduler() if self._started else None
        except Exception:
            self.pipelines, self.triggers, self._scheduler = (
                old_pipelines,
                old_triggers,
                old_scheduler,
            )
            raise
        if old_scheduler is not None:
            old_scheduler.shutdown(wait=False)  # its jobs only start fire threads
        if self._started:
            self._announce()
            self._start_catch_up()

    # Life cycle ------------------------------------------------------------
    def before_start(self) -> None:
        """Start firing on schedule, and make the catch-up fires in the background (no
        firing without schedules)."""
        self._started = True
        self._scheduler = self._new_scheduler()
        self._announce()
        self._start_catch_up()

    def step(self) -> float | None:
        """Report each hung fire once (they also make `stalled()` true)."""
        for fire in self.hung():
            ident = fire.thread.ident or 0
            if ident not in self._reported:
                self._reported.add(ident)
                self._report_hung(fire, "watch")
        return None

    def after_stop(self) -> None:
        """Stop firing; waits (at most STOP_WAIT_SECONDS) for fires in progress to finish
        enqueueing, and names those that did not."""
        self._started = False
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        for fire in self.running():
            fire.thread.join(max(0.0, deadline - time.monotonic()))
        if self._catch_up is not None:
            self._catch_up.join(max(0.0, deadline - time.monotonic()))
        for fire in self.running():
            self._report_hung(fire, "stopping")

    def _new_scheduler(self) -> Any:
        if not self.triggers:
            return None
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(timezone=UTC)
        for name, trigger in self.triggers.items():
            scheduler.add_job(
                self._on_time,
                trigger,
                args=[name],
                id=name,
                name=f"schedule {name}",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=LATE_FIRE_SECONDS,
            )
        scheduler.start()
        return scheduler

    def _announce(self) -> None:
        now = self.store.clock()
        for name, trigger in self.triggers.items():
            upcoming = next_fires(trigger, now, 1)
            event(
                "schedule.started",
                pipeline=name,
                schedule=self.pipelines[name].schedule,
                next_fire=upcoming[0].isoformat() if upcoming else None,
            )

    # Fires in progress ---------------------------------------------------------
    def running(self) -> list[RunningFire]:
        """The fires in progress now."""
        with self._lock:
            return list(self._running.values())

    def hung(self) -> list[RunningFire]:
        """Fires without progress for longer than `fire_stall_after` (a blocked read, a
        stuck call): one phase ran past its budget and the margin."""
        now = time.monotonic()
        return [f for f in self.running() if f.idle_seconds(now) > self.fire_stall_after]

    def _progress(self, name: str) -> None:
        """The fire of `name` running in this thread made progress (began a new phase)."""
        with self._lock:
            fire = self._running.get(name)
            if fire is not None and fire.thread is threading.current_thread():
                self._running[name] = replace(fire, progressed=time.monotonic())

    def stalled(self) -> bool:
        """Whether a fire hangs: the watchdog stops, and systemd restarts the daemon."""
        return bool(self.hung()) or super().stalled()

    def _report_hung(self, fire: RunningFire, when: str) -> None:
        event(
            "schedule.fire_hung",
            logging.ERROR,
            pipeline=fire.pipeline,
            fire_time=fire.fire_time.isoformat() if fire.fire_time else None,
            running_seconds=round(time.monotonic() - fire.started, 1),
            idle_seconds=round(fire.idle_seconds(time.monotonic()), 1),
            noticed=when,
        )

    def _launch(self, name: str, fire_time: datetime | None, work: Callable[[], None]) -> bool:
        """Run `work` in a fire thread of `name`, unless a fire of `name` still runs
        (that one is reported, and this one skipped). Returns whether it started."""
        with self._lock:
            busy = self._running.get(name)
            if busy is None:
                thread = threading.Thread(
                    target=self._run_fire, args=(name, work), name=f"fire-{name}", daemon=True
                )
                self._running[name] = RunningFire(name, fire_time, time.monotonic(), thread)
        if busy is not None:
            if busy.idle_seconds(time.monotonic()) > self.fire_stall_after:
                self._report_hung(busy, "next fire")
            else:
                event(
                    "schedule.fire_skipped",
                    logging.WARNING,
                    pipeline=name,
                    fire_time=fire_time.isoformat() if fire_time else None,
                    reason="the previous fire is still running",
                )
            return False
        thread.start()
        return True

    def _run_fire(self, name: str, work: Callable[[], None]) -> None:
        try:
            work()
        finally:
            with self._lock:
                self._running.pop(name, None)

    # Fires -------------------------------------------------------------------
    def _start_catch_up(self) -> None:
        if not self.triggers:
            return
        thread = threading.Thread(target=self._catch_up_loop, name="schedule-catch-up", daemon=True)
        self._catch_up = thread
        thread.start()

    def _catch_up_loop(self) -> None:
        """`catch_up` until it got through, waiting out database outages."""
        outage = Outage("schedule.db_unavailable", "schedule.db_recovered")
        while not self.stopping:
            try:
                self.catch_up()
            except DatabaseUnavailable as exc:
                self.wait(outage.failed(exc))
                continue
            except Exception:  # the next fire sweeps the same files
                log.exception("catch-up failed")
            outage.ok()
            return

    def catch_up(self) -> list[tuple[str, datetime]]:
        """Make the one fire per pipeline missed while no daemon ran; returns those made.
        Each runs in its pipeline's fire thread (a hung one holds up no other pipeline);
        this waits for them. Raises DatabaseUnavailable if the fire history cannot be
        read."""
        now = self.store.clock()
        missed_fires: list[tuple[str, datetime]] = []
        for name, trigger in list(self.triggers.items()):
            last = self.fires.last_fire(name)
            grace = timedelta(seconds=self.pipelines[name].misfire_grace)
            missed = missed_fire(last.fire_time if last else None, now, trigger, grace)
            if missed is not None:
                missed_fires.append((name, missed))
        started: list[tuple[str, datetime, threading.Event, list[bool]]] = []
        for name, missed in missed_fires:
            done = threading.Event()
            result: list[bool] = []

            def work(
                name: str = name,
                missed: datetime = missed,
                done: threading.Event = done,
                result: list[bool] = result,
            ) -> None:
                try:
                    result.append(self._guarded_fire(name, missed, catch_up=True))
                finally:
                    done.set()

            if self._launch(name, missed, work):
                started.append((name, missed, done, result))
        made: list[tuple[str, datetime]] = []
        for name, missed, done, result in started:
            while not done.wait(1.0):
                if self.stopping:
                    return made
            if result and result[0]:
                made.append((name, missed))
        return made

    def _on_time(self, name: str) -> None:
        # Runs in APScheduler's thread pool, just after the fire time. APScheduler 3 does
        # not pass the scheduled time, but cron times are exact: the newest one due is it.
        now = self.store.clock()
        trigger = self.triggers.get(name)
        if trigger is None:  # removed by a reload a moment ago
            return
        fire_time = latest_fire(trigger, now - timedelta(seconds=LATE_FIRE_SECONDS), now)
        if fire_time is None:
            event("schedule.skipped", logging.WARNING, pipeline=name, reason="fire came late")
            return

        def work() -> None:
            self._guarded_fire(name, fire_time)

        self._launch(name, fire_time, work)

    def _guarded_fire(self, name: str, fire_time: datetime, catch_up: bool = False) -> bool:
        """`fire`, with its errors logged (a database outage must not kill anything);
        True if this daemon acted on it."""
        try:
            return self.fire(name, fire_time, catch_up=catch_up) is not None
        except Exception as exc:
            log.exception("schedule fire failed")
            event(
                "schedule.error",
                logging.ERROR,
                pipeline=name,
                fire_time=fire_time.isoformat(),
                catch_up=catch_up,
                error=str(exc),
            )
            return False

    def fire(self, name: str, fire_time: datetime, catch_up: bool = False) -> list[int] | None:
        """Act on one fire: claim it, enqueue, record the jobs. None if it was already taken."""
        fire_id = self.fires.record(name, fire_time, self.worker_id, catch_up)
        if fire_id is None:
            event("schedule.fire_taken", pipeline=name, fire_time=fire_time.isoformat())
            return None
        pipeline = self.pipelines[name]
        job_ids: list[int] = []
        if pipeline.sweep:
            job_ids += self.sweeper.sweep(name, pipeline.sweep)
        if pipeline.inbox_mode == "scheduled":
            self._progress(name)  # the sweep is done: the inbox has a budget of its own
            job_ids += self.enqueue_inbox(name)
        self.fires.link(fire_id, job_ids)
        event(
            "schedule.fired",
            pipeline=name,
            fire_time=fire_time.isoformat(),
            catch_up=catch_up,
            jobs=len(job_ids),
            fire_id=fire_id,
        )
        if job_ids:
            self.on_enqueued()
        return job_ids
