"""Schedules: APScheduler fires a pipeline's cron; a fire only records itself and enqueues.

A fire never runs inference: it claims the fire in `schedule_fires` (unique per
pipeline and fire time, so among daemons sharing a database exactly one acts on
it), enqueues the pipeline's sweep and/or its waiting inbox, and wakes the runner.
At start-up, the newest fire missed while no daemon ran is made once, if it is
within the pipeline's `misfire_grace`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.config import Settings
from worker.logs import event
from worker.pipelines.schedule_time import cron_trigger, latest_fire, missed_fire, next_fires
from worker.pipelines.spec import Pipeline
from worker.queue.fires import FireStore
from worker.queue.jobs import JobStore
from worker.sources.sweep import Sweeper

log = logging.getLogger(__name__)

# How late APScheduler may start a fire before it drops it (the process was stalled);
# also how far back a fire's own time is looked up when it runs.
LATE_FIRE_SECONDS = 30


class Scheduler:
    """One cron trigger per scheduled pipeline, run by an APScheduler BackgroundScheduler."""

    name = "scheduler"

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        pipelines: Mapping[str, Pipeline],
        worker_id: str,
        enqueue_inbox: Callable[[str], list[int]],
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.fires = FireStore(store.db, clock=store.clock)
        self.sweeper = Sweeper(settings, store)
        self._use(pipelines)
        self.worker_id = worker_id
        self.enqueue_inbox = enqueue_inbox
        self.on_enqueued = on_enqueued
        self._scheduler: Any = None
        self._started = False  # the service is on (firing, when there are schedules)

    def _use(self, pipelines: Mapping[str, Pipeline]) -> None:
        self.pipelines = {name: p for name, p in pipelines.items() if p.schedule is not None}
        self.triggers: dict[str, Any] = {
            name: cron_trigger(p.schedule, p.timezone)
            for name, p in self.pipelines.items()
            if p.schedule is not None
        }

    def reload(self, pipelines: Mapping[str, Pipeline]) -> None:
        """Fire on the schedules of `pipelines` from now on (a reload): also schedules added
        to a daemon that had none. Raises (DatabaseUnavailable in the catch-up) with the
        service still marked started, so the next reload tries again."""
        self._fire_off()
        self._use(pipelines)
        if self._started:
            self._fire_on()

    # Life cycle ------------------------------------------------------------
    def start(self) -> None:
        """Make the catch-up fires, then start firing on schedule (no-op without schedules)."""
        self._started = True
        self._fire_on()

    def stop(self) -> None:
        """Stop firing; waits for a fire in progress to finish enqueueing."""
        self._started = False
        self._fire_off()

    def _fire_on(self) -> None:
        if not self.triggers:
            return
        from apscheduler.schedulers.background import BackgroundScheduler

        self.catch_up()
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
        self._scheduler = scheduler
        now = self.store.clock()
        for name, trigger in self.triggers.items():
            upcoming = next_fires(trigger, now, 1)
            event(
                "schedule.started",
                pipeline=name,
                schedule=self.pipelines[name].schedule,
                next_fire=upcoming[0].isoformat() if upcoming else None,
            )

    def _fire_off(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    # Fires -------------------------------------------------------------------
    def catch_up(self) -> list[tuple[str, datetime]]:
        """Make the one fire per pipeline missed while no daemon ran; returns those made."""
        made: list[tuple[str, datetime]] = []
        now = self.store.clock()
        for name, trigger in self.triggers.items():
            last = self.fires.last_fire(name)  # a database error here stops start-up
            grace = timedelta(seconds=self.pipelines[name].misfire_grace)
            missed = missed_fire(last.fire_time if last else None, now, trigger, grace)
            if missed is None:
                continue
            try:
                if self.fire(name, missed, catch_up=True) is not None:
                    made.append((name, missed))
            except Exception as exc:  # the next fire sweeps the same files: keep starting
                log.exception("catch-up fire failed")
                event(
                    "schedule.error",
                    logging.ERROR,
                    pipeline=name,
                    fire_time=missed.isoformat(),
                    error=str(exc),
                )
        return made

    def _on_time(self, name: str) -> None:
        # Runs in APScheduler's thread pool, just after the fire time. APScheduler 3 does
        # not pass the scheduled time, but cron times are exact: the newest one due is it.
        now = self.store.clock()
        fire_time = latest_fire(
            self.triggers[name], now - timedelta(seconds=LATE_FIRE_SECONDS), now
        )
        if fire_time is None:
            event("schedule.skipped", logging.WARNING, pipeline=name, reason="fire came late")
            return
        try:
            self.fire(name, fire_time)
        except Exception as exc:  # a database outage must not kill the scheduler
            log.exception("schedule fire failed")
            event(
                "schedule.error",
                logging.ERROR,
                pipeline=name,
                fire_time=fire_time.isoformat(),
                error=str(exc),
            )

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
