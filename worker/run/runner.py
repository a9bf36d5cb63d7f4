"""Running one claimed job to a recorded outcome.

claim (the dispatcher) -> `handler.run` -> record the outcome -> `handler.after_final`.
Every state change is one lease-guarded statement, written through the `Recorder` so a
database outage delays the record instead of losing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from worker import liveness
from worker.config import Settings
from worker.errors import GenerationInterrupted, InputError
from worker.logs import event
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob, JobStore
from worker.queue.models import JobKind
from worker.queue.outage import DatabaseUnavailable
from worker.queue.retry import decide_retry
from worker.run.kinds.base import (
    Attempt,
    Expanded,
    FinalOutcome,
    JobHandler,
    JobResult,
    JobVanished,
)
from worker.run.leases import LeaseKeeper
from worker.run.recorder import DatabaseGone, Recorder
from worker.run.stop import StopFlags

log = logging.getLogger(__name__)
UNKNOWN_PIPELINE_RECHECK_SECONDS = 15.0


class _UnknownPipeline(Exception):
    """The job's pipeline is not loaded, within the grace period."""


class JobObserver(Protocol):
    """Told what happened to each job (the daemon's metrics implement this)."""

    def job_succeeded(
        self, pipeline: str, prompt_tokens: int, completion_tokens: int, seconds: float
    ) -> None: ...

    def job_failed(self, pipeline: str, final: bool) -> None: ...

    def jobs_recovered(self, count: int) -> None: ...


class NoObserver:
    """A JobObserver that ignores everything."""

    def job_succeeded(
        self, pipeline: str, prompt_tokens: int, completion_tokens: int, seconds: float
    ) -> None:
        pass

    def job_failed(self, pipeline: str, final: bool) -> None:
        pass

    def jobs_recovered(self, count: int) -> None:
        pass


class JobRunner:
    """Runs claimed jobs through their kind's handler and records the outcome."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        handlers: Mapping[JobKind, JobHandler],
        pipelines: Mapping[str, Pipeline],
        leases: LeaseKeeper,
        record: Recorder,
        stop: StopFlags,
        observer: JobObserver | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.handlers = handlers
        self.pipelines = pipelines
        self.leases = leases
        self.record = record
        self.stop = stop
        self.observer: JobObserver = observer or NoObserver()
        # Called once a job's final outcome is recorded: (job, status, output path); the
        # daemon queues the pipeline's completion hook here (worker.run.hooks).
        self.on_final: Callable[[ClaimedJob, str, str | None], None] = lambda *_: None

    def run_one(self, job: ClaimedJob) -> None:
        """Run `job` to a recorded outcome (or release it at shutdown)."""
        event("job.claimed", job_id=job.id, pipeline=job.pipeline, attempt=job.attempts)
        self.leases.hold(job)
        started = time.monotonic()
        try:
            self._handle(job, started)
        except DatabaseGone as exc:  # shutdown during an outage: the lease expires, it reruns
            event(
                "job.abandoned",
                logging.WARNING,
                job_id=job.id,
                reason=f"database unavailable at shutdown: {exc}",
            )
        finally:
            self.leases.drop(job)

    def _should_stop(
        self, job: ClaimedJob, deadline: float | None, heartbeat: liveness.Heartbeat | None
    ) -> bool:
        if heartbeat is not None:  # called per generated token, from the decode thread too
            heartbeat.beat()
        if self.stop.hard.is_set() or self.leases.is_lost(job):
            return True
        if deadline is not None and time.monotonic() > deadline:
            return True
        return self.record.past_shutdown_timeout()

    def _handler(self, job: ClaimedJob) -> JobHandler:
        try:
            kind = JobKind(job.source)
        except ValueError:
            kinds = ", ".join(k.value for k in JobKind)
            raise InputError(f"unknown source {job.source!r} (known: {kinds})") from None
        return self.handlers[kind]

    def _pipeline(self, job: ClaimedJob) -> Pipeline:
        pipeline = self.pipelines.get(job.pipeline)
        if pipeline is None:
            known = ", ".join(sorted(self.pipelines))
            reason = f"unknown pipeline {job.pipeline!r} (known: {known})"
            if self._within_grace(job):
                raise _UnknownPipeline(reason)
            raise InputError(reason)
        return pipeline

    def _input_text(self, job: ClaimedJob) -> str | None:
        """The row's text, read for this job alone, once its size is known to be bounded.

        A table row is another program's input: at most `max_input_bytes`. The other
        kinds carry a record the daemon wrote from a bounded file, JSON-escaped (up to
        six bytes per character), so they get that much room.
        """
        size = job.input_bytes
        if size is None:
            return None
        limit = self.settings.max_input_bytes
        if job.source != JobKind.TABLE:
            limit = limit * 6 + 65_536
        if size > limit:
            raise InputError(
                f"input_text is {size} bytes; the limit is {limit} (max_input_bytes): "
                "split the input"
            )
        return self.store.claimed_input(job.id)

    def _within_grace(self, job: ClaimedJob) -> bool:
        grace = self.settings.unknown_pipeline_grace
        if grace <= 0 or job.created_at is None:
            return False
        return (self.store.clock() - job.created_at).total_seconds() < grace

    def _defer(self, job: ClaimedJob, reason: str) -> None:
        # Not yet a failure: the pipeline may come with the next reload. Look again soon.
        waiting = f"{reason}; waiting for a reload"
        delay = UNKNOWN_PIPELINE_RECHECK_SECONDS
        if self.record(lambda: self.store.defer(job.id, job.lease_token, waiting, delay)):
            event("job.deferred", logging.WARNING, job_id=job.id, reason=waiting)

    def _handle(self, job: ClaimedJob, started: float) -> None:
        handler: JobHandler | None = None
        timeout = self.settings.job_timeout
        deadline = started + timeout if timeout > 0 else None
        heartbeat = liveness.current()  # the slot's: the job's waits keep it beating
        try:
            handler = self._handler(job)
            attempt = Attempt(
                job,
                self._pipeline(job),
                should_stop=lambda: self._should_stop(job, deadline, heartbeat),
                still_leased=lambda: self.record(lambda: self.leases.confirm(job)),
                input_text=self._input_text(job),
                deadline=deadline,
            )
            outcome = handler.run(attempt)
        except _UnknownPipeline as exc:
            self._defer(job, str(exc))
        except JobVanished as exc:
            reason = str(exc)
            self.record(lambda: self.store.fail(job.id, job.lease_token, reason, retry_at=None))
            event("job.skipped", job_id=job.id, reason=reason)
        except InputError as exc:
            self._fail(job, handler, str(exc), retryable=False)
        except GenerationInterrupted:
            if deadline is not None and time.monotonic() > deadline and not self._stopping(job):
                error = f"job ran past job_timeout ({timeout:g} s) and was stopped"
                self._fail(job, handler, error, retryable=False)
            else:
                self._release(job, "shutdown")
        except DatabaseUnavailable as exc:  # mid-job: run it again when the database is back
            event("job.db_unavailable", logging.WARNING, job_id=job.id, error=str(exc))
            self._release(job, "database unavailable")
        except OSError as exc:  # disk full, unwritable outbox: the input stays, try later
            self._fail(job, handler, f"cannot write output: {exc}", retryable=True)
        except DatabaseGone:
            raise
        except Exception as exc:
            log.exception("job %s crashed", job.id)
            self._fail(job, handler, f"internal error: {type(exc).__name__}: {exc}", True)
        else:
            if isinstance(outcome, Expanded):
                self.leases.drop(job)  # the file job waits for its children, leaseless
                event("job.expanded", job_id=job.id, pipeline=job.pipeline)
            else:
                self._succeed(job, handler, outcome, started)

    def _stopping(self, job: ClaimedJob) -> bool:
        return self.stop.hard.is_set() or self.leases.is_lost(job)

    def _release(self, job: ClaimedJob, reason: str) -> None:
        if self.leases.is_lost(job):
            event("job.abandoned", logging.WARNING, job_id=job.id, reason="lease lost")
            return
        if self.record(lambda: self.store.release(job.id, job.lease_token)):
            event("job.released", job_id=job.id, reason=reason)
        else:  # the job moved on meanwhile (e.g. it was expanded): nothing to give back
            event("job.release_skipped", job_id=job.id, reason=reason)

    def _succeed(
        self, job: ClaimedJob, handler: JobHandler, done: JobResult, started: float
    ) -> None:
        output = str(done.output) if done.output else None
        recorded = self.record(
            lambda: self.store.complete(
                job.id,
                job.lease_token,
                done.result,
                done.prompt_tokens,
                done.completion_tokens,
                output,
            )
        )
        self.leases.drop(job)  # its lease ended with the outcome: no longer to be renewed
        if not recorded:
            event("job.abandoned", logging.WARNING, job_id=job.id, reason="lease lost")
            return
        seconds = time.monotonic() - started
        self.observer.job_succeeded(
            job.pipeline, done.prompt_tokens, done.completion_tokens, seconds
        )
        handler.after_final(job, FinalOutcome(True, None, self.store.clock()))
        self.on_final(job, "succeeded", output)
        event(
            "job.succeeded",
            job_id=job.id,
            pipeline=job.pipeline,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            seconds=round(seconds, 3),
            output=output,
        )

    def _fail(
        self, job: ClaimedJob, handler: JobHandler | None, error: str, retryable: bool
    ) -> None:
        decision = decide_retry(
            attempts=job.attempts,
            max_attempts=self.settings.max_attempts,
            retryable=retryable,
            now=self.store.clock(),
            base_seconds=self.settings.retry_base_seconds,
        )
        if decision.dead:
            error = f"gave up after {job.attempts} attempts: {error}"
        recorded = self.record(
            lambda: self.store.fail(
                job.id, job.lease_token, error, decision.retry_at, decision.dead
            )
        )
        self.leases.drop(job)  # its lease ended with the outcome: no longer to be renewed
        if not recorded:
            event("job.abandoned", logging.WARNING, job_id=job.id, reason="lease lost")
            return
        final = decision.retry_at is None
        self.observer.job_failed(job.pipeline, final)
        if final and handler is not None:
            handler.after_final(job, FinalOutcome(False, error, self.store.clock()))
        if final:
            self.on_final(job, "dead" if decision.dead else "failed", None)
        event(
            "job.failed" if final else "job.retrying",
            logging.WARNING,
            job_id=job.id,
            pipeline=job.pipeline,
            error=error,
            retry_at=decision.retry_at.isoformat() if decision.retry_at else None,
        )
