"""The loop that ties store, pipelines, engine and sinks together.

One thread claims and runs jobs; a lease keeper thread renews their leases. Signal
handlers only set the events on `StopFlags`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from worker.config import Settings
from worker.engine import Engine, GenerationInterrupted
from worker.file_jobs import FileRef, archive_original
from worker.inputs import InputError
from worker.logs import event
from worker.notify import Progress
from worker.outage import OUTAGE_ERRORS, Outage
from worker.pipelines import Pipeline
from worker.retry import decide_retry
from worker.sinks import remove_stale_temps
from worker.store import ClaimedJob, JobStore
from worker.work import Done, JobVanished, Work

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class StopFlags:
    """Set by signal handlers. `soft`: stop claiming, finish within the timeout. `hard`: now."""

    soft: threading.Event = field(default_factory=threading.Event)
    hard: threading.Event = field(default_factory=threading.Event)
    soft_at: float | None = None

    def request(self) -> None:
        """First request stops claiming; a second one stops at once."""
        if self.soft.is_set():
            self.hard.set()
        else:
            self.soft_at = time.monotonic()
            self.soft.set()


class DatabaseGone(Exception):
    """The database stayed unavailable until shutdown; the job's outcome is not recorded."""


class LeaseKeeper:
    """Renews the leases of the jobs in hand; remembers which ones were lost."""

    def __init__(self, store: JobStore, worker_id: str, lease_seconds: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self._held: dict[int, str] = {}
        self._lost: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.outage = Outage("lease.renew_failed", "lease.renew_recovered")

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def hold(self, job: ClaimedJob) -> None:
        with self._lock:
            self._held[job.id] = job.lease_token

    def drop(self, job_id: int) -> None:
        with self._lock:
            self._held.pop(job_id, None)
            self._lost.discard(job_id)

    def is_lost(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._lost

    def confirm(self, job_id: int, token: str) -> bool:
        """Renew one lease now; False (and remembered) if it is lost. Database errors raise:
        a caller about to publish must not take "cannot tell" for "still mine"."""
        kept = self.store.heartbeat(job_id, token, self.lease_seconds)
        if not kept:
            with self._lock:
                if job_id not in self._held:
                    return kept  # finished meanwhile: its lease was released, not lost
                self._lost.add(job_id)
            event("job.lease_lost", logging.WARNING, job_id=job_id)
        return kept

    def renew(self, job_id: int, token: str) -> bool:
        """Renew one lease in the background; a database error counts as still held."""
        try:
            kept = self.confirm(job_id, token)
        except Exception as exc:  # outage: keep working, the lease may still hold
            self.outage.failed(exc)  # logged once per outage, not every lease/3
            return True
        self.outage.ok()
        return kept

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                held = [(j, t) for j, t in self._held.items() if j not in self._lost]
            for job_id, token in held:
                self.renew(job_id, token)
            try:
                self.store.worker_heartbeat(self.worker_id)
            except Exception as exc:
                self.outage.failed(exc)
            else:
                self.outage.ok()


class Runner:
    """Claims jobs and runs them to a recorded outcome."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        engine: Engine,
        pipelines: Mapping[str, Pipeline],
        worker_id: str,
        stop: StopFlags,
        wake: threading.Event,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.pipelines = pipelines
        self.worker_id = worker_id
        self.stop = stop
        self.wake = wake
        self.progress = progress or Progress()
        self.leases = LeaseKeeper(store, worker_id, settings.lease_seconds)
        # Jobs inside the engine. Slot threads change it together: a lost `+=` would leave
        # it above zero for good, idle slots would stop touching progress, and systemd's
        # watchdog would restart a healthy idle daemon.
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self.work = Work(settings, store, engine, pipelines)
        self.outage = Outage("db.unavailable", "db.recovered")
        self._temps_swept_at = float("-inf")

    def run(self, once: bool = False, inputs_pending: Callable[[], int] = lambda: 0) -> None:
        """Claim and run jobs until stopped (or, with `once`, until nothing is left to do).

        One thread per slot (`parallel`): each claims a job when it is free and runs it,
        so the engine always has as many sequences as there are slots, and never more
        leases are held than the slots can finish.
        """
        self.leases.start()
        crashed: list[BaseException] = []

        def slot_main(index: int) -> None:
            try:
                self._slot_loop(index, once, inputs_pending)
            except BaseException as exc:  # a dying slot stops the daemon instead of vanishing
                crashed.append(exc)
                self.stop.soft.set()
                self.stop.hard.set()
                self.wake.set()

        slots = [
            threading.Thread(target=slot_main, args=(i,), name=f"slot-{i}")
            for i in range(max(1, self.settings.parallel))
        ]
        try:
            for thread in slots:
                thread.start()
            for thread in slots:
                thread.join()
        finally:
            self.leases.stop()
        if crashed:
            raise crashed[0]

    def _slot_loop(self, slot: int, once: bool, inputs_pending: Callable[[], int]) -> None:
        last_sweep = float("-inf")
        while not self.stop.soft.is_set():
            if self._in_flight == 0:  # with work in flight, the engine touches progress
                self.progress.touch()
            try:
                if slot == 0 and time.monotonic() - last_sweep >= self.settings.sweep_interval:
                    last_sweep = time.monotonic()
                    self._recover()
                # Pipelines outside their run window wait, queued (README, "Schedules").
                now = self.store.clock()
                closed = [n for n, p in self.pipelines.items() if not p.open_at(now)]
                jobs = self.store.claim(
                    self.worker_id, 1, self.settings.lease_seconds, exclude_pipelines=closed
                )
                self.outage.ok()
            except Exception as exc:  # the database is not answering: wait, try again
                self.stop.soft.wait(self.outage.failed(exc))
                continue
            if not jobs:
                if once and inputs_pending() == 0 and not self.store.has_ready(closed):
                    return
                self.wake.wait(self.settings.poll_interval)
                self.wake.clear()
                continue
            for job in jobs:
                self._run_one(job)

    def _recover(self) -> None:
        for recovered in self.store.recover_expired(max_crashes=self.settings.max_attempts):
            event("job.recovered", job_id=recovered.id, status=recovered.status)
        for parent in self.store.wake_waiting():  # children finished while no one looked
            event("job.gather_queued", job_id=parent)
        if time.monotonic() - self._temps_swept_at < self.settings.lease_seconds:
            return  # a temp file must be lease_seconds old to go: no need to look more often
        self._temps_swept_at = time.monotonic()
        try:
            self._remove_stale_temps()
        except OSError as exc:  # not a database outage: log it and keep claiming
            event("sweep.temp_failed", logging.WARNING, error=str(exc))

    def _remove_stale_temps(self) -> None:
        # Temp files of a process killed mid-write (this one's previous life, or another's).
        now = time.time()
        for kind in ("outbox", "failed"):
            root = self.settings.data_dir / kind
            folders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
            for folder in folders:
                for path in remove_stale_temps(folder, self.settings.lease_seconds, now):
                    event("sweep.temp_removed", path=str(path))

    def _db(self, call: Callable[[], T]) -> T:
        """Run one store call, waiting out a database outage (logged once) rather than
        dropping the outcome of work already done. Gives up only at shutdown."""
        while True:
            try:
                result = call()
            except OUTAGE_ERRORS as exc:
                delay = self.outage.failed(exc)
                if self.stop.hard.wait(delay) or self._past_shutdown_timeout():
                    raise DatabaseGone(str(exc)) from exc
                continue
            self.outage.ok()
            return result

    def _past_shutdown_timeout(self) -> bool:
        soft_at = self.stop.soft_at
        return soft_at is not None and time.monotonic() - soft_at > self.settings.shutdown_timeout

    # One job -----------------------------------------------------------------
    def _should_stop(self, job_id: int) -> bool:
        self.progress.touch()  # called once per generated token
        if self.stop.hard.is_set() or self.leases.is_lost(job_id):
            return True
        return self._past_shutdown_timeout()

    def _run_one(self, job: ClaimedJob) -> None:
        event("job.claimed", job_id=job.id, pipeline=job.pipeline, attempt=job.attempts)
        self.leases.hold(job)
        started = time.monotonic()
        try:
            self._handle(job, started)
        except DatabaseGone as exc:  # shutdown during an outage: the lease expires, it reruns
            event("job.abandoned", logging.WARNING, job_id=job.id,
                  reason=f"database unavailable at shutdown: {exc}")  # fmt: skip
        finally:
            self.leases.drop(job.id)

    def _handle(self, job: ClaimedJob, started: float) -> None:
        try:
            self._execute(job, started)
        except JobVanished as exc:
            reason = str(exc)
            self._db(lambda: self.store.fail(job.id, job.lease_token, reason, retry_at=None))
            event("job.skipped", job_id=job.id, reason=reason)
        except InputError as exc:
            self._fail(job, str(exc), retryable=False)
        except GenerationInterrupted:
            if self.leases.is_lost(job.id):
                event("job.abandoned", logging.WARNING, job_id=job.id, reason="lease lost")
            else:
                self._db(lambda: self.store.release(job.id, job.lease_token))
                event("job.released", job_id=job.id, reason="shutdown")
        except OSError as exc:  # disk full, unwritable outbox: the input stays, try later
            self._fail(job, f"cannot write output: {exc}", retryable=True)
        except DatabaseGone:
            raise
        except Exception as exc:
            log.exception("job %s crashed", job.id)
            self._fail(job, f"internal error: {type(exc).__name__}: {exc}", retryable=True)

    def _execute(self, job: ClaimedJob, started: float) -> None:
        pipeline = self.pipelines.get(job.pipeline)
        if pipeline is None:
            known = ", ".join(sorted(self.pipelines))
            raise InputError(f"unknown pipeline {job.pipeline!r} (known: {known})")
        with self._in_flight_lock:
            self._in_flight += 1
        try:
            done = self.work.execute(
                job,
                pipeline,
                should_stop=lambda: self._should_stop(job.id),
                still_leased=lambda: self._db(lambda: self.leases.confirm(job.id, job.lease_token)),
            )
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
        if done is None:
            event("job.expanded", job_id=job.id, pipeline=job.pipeline)
            return
        self._succeed(job, done, started)

    def _succeed(self, job: ClaimedJob, done: Done, started: float) -> None:
        output = done.output
        recorded = self._db(
            lambda: self.store.complete(
                job.id,
                job.lease_token,
                done.result,
                done.prompt_tokens,
                done.completion_tokens,
                str(output) if output else None,
            )
        )
        if not recorded:
            event("job.abandoned", logging.WARNING, job_id=job.id, reason="lease lost")
            return
        if job.source == "file" and job.source_path:
            self._archive(job, succeeded=True)
        self._child_final(job)
        event(
            "job.succeeded",
            job_id=job.id,
            pipeline=job.pipeline,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            seconds=round(time.monotonic() - started, 3),
            output=str(output) if output else None,
        )

    def _child_final(self, job: ClaimedJob) -> None:
        """The last child of a file job to finish queues its parent to gather the results."""
        if job.parent_id is not None and self.store.wake_parent(job.parent_id):
            event("job.gather_queued", job_id=job.parent_id)
            self.wake.set()

    def _fail(self, job: ClaimedJob, error: str, retryable: bool) -> None:
        decision = decide_retry(
            attempts=job.attempts,
            max_attempts=self.settings.max_attempts,
            retryable=retryable,
            now=self.store.clock(),
            base_seconds=self.settings.retry_base_seconds,
        )
        if decision.dead:
            error = f"gave up after {job.attempts} attempts: {error}"
        recorded = self._db(
            lambda: self.store.fail(
                job.id, job.lease_token, error, decision.retry_at, decision.dead
            )
        )
        if not recorded:
            event("job.abandoned", logging.WARNING, job_id=job.id, reason="lease lost")
            return
        final = decision.retry_at is None
        if final and job.source == "file" and job.source_path:
            self._archive(job, succeeded=False, error=error)
        if final:
            self._child_final(job)
        event(
            "job.failed" if final else "job.retrying",
            logging.WARNING,
            job_id=job.id,
            pipeline=job.pipeline,
            error=error,
            retry_at=decision.retry_at.isoformat() if decision.retry_at else None,
        )

    def _archive(self, job: ClaimedJob, succeeded: bool, error: str | None = None) -> None:
        assert job.source_path is not None
        try:
            archived = archive_original(
                self.settings,
                FileRef.parse(job.source_path),
                job.id,
                succeeded,
                error,
                self.store.clock(),
            )
        except OSError as exc:  # the watcher finishes the move on a later rescan
            event("job.archive_failed", logging.WARNING, job_id=job.id, error=str(exc))
            return
        if archived is not None:
            self._db(lambda: self.store.set_archived_path(job.id, str(archived)))
