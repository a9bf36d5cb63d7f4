"""The runner under faults, with a fake engine over a real SQLite store: a full disk, a lease
taken over while generating (a zombie worker), the database failing at completion."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.clock import frozen
from tests.fakes import FakeEngine
from tests.harness import Runner
from tests.unit.test_runner import PIPELINES, drop, make_runner
from worker.config import Settings
from worker.io.atomic import write_atomic
from worker.llm.engine import Completion
from worker.llm.generation import Generation
from worker.queue.jobs import JobStore, NewJob, utcnow
from worker.queue.outage import DatabaseUnavailable
from worker.run.stop import StopFlags
from worker.sandbox import ChildKilled, Sandbox


def test_disk_full_is_retryable_and_succeeds_once_space_is_freed(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = drop(settings, store, "a.txt", b"hello")
    full = True

    def write(
        path: Path,
        data: bytes,
        before_replace: Callable[[], None] | None = None,
        mode: int = 0o640,
        keep: Callable[[Path], bool] | None = None,
    ) -> bool:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write_atomic(path, data, before_replace, mode, keep)

    monkeypatch.setattr("worker.run.kinds.base.write_atomic", write)
    runner = make_runner(settings, store, FakeEngine())
    runner.run(once=True)
    job = store.get(job_id)
    assert job is not None and (job.status, job.attempts) == ("queued", 1)
    assert job.error is not None
    assert job.error.startswith("cannot write output: [Errno 28] No space left on device")
    assert (settings.folder("inbox", "echo") / "a.txt").read_bytes() == b"hello"
    outbox = settings.folder("outbox", "echo")
    assert not outbox.exists() or list(outbox.iterdir()) == []

    full = False
    store.clock = frozen(utcnow() + timedelta(hours=1))  # past the backoff
    runner.run(once=True)
    job = store.get(job_id)
    assert job is not None and (job.status, job.attempts) == ("succeeded", 2)
    assert (outbox / "a.txt.txt").read_text().startswith("len=")
    assert not (settings.folder("inbox", "echo") / "a.txt").exists()


class TakeoverEngine(FakeEngine):
    """While "generating", the lease expires and another worker claims the job, faster than
    this worker's lease keeper notices: as after a long pause (SIGSTOP, a frozen VM)."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        super().__init__()
        self.store = store
        self.settings = settings
        self.thief_token = ""

    def complete(
        self,
        prompt: str,
        generation: Generation,
        should_stop: Callable[[], bool],
        shared_prefix: str | None = None,
    ) -> Completion:
        later = self.store.clock() + timedelta(seconds=self.settings.lease_seconds + 1)
        thief = JobStore(self.store.db, clock=frozen(later))
        assert [
            r.status for r in thief.recover_expired(stale_after=self.settings.lease_seconds)
        ] == ["queued"]
        (claimed,) = thief.claim("w2", 1, self.settings.lease_seconds)
        self.thief_token = claimed.lease_token
        return super().complete(prompt, generation, should_stop)


def test_a_worker_that_lost_its_lease_neither_publishes_nor_completes(
    settings: Settings, store: JobStore, events: Callable[[str], list[logging.LogRecord]]
) -> None:
    settings = settings.model_copy(update={"lease_seconds": 600})  # the keeper stays asleep
    job_id = drop(settings, store, "a.txt", b"hello")
    engine = TakeoverEngine(store, settings)
    make_runner(settings, store, engine).run(once=True)
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.lease_owner, job.lease_token) == ("running", "w2", engine.thief_token)
    assert job.result_text is None
    outbox = settings.folder("outbox", "echo")
    assert not outbox.exists() or list(outbox.iterdir()) == []  # no output, no temp file
    assert (settings.folder("inbox", "echo") / "a.txt").exists()  # w2's to archive
    assert [r.fields["reason"] for r in events("job.abandoned")] == ["lease lost"]  # type: ignore[attr-defined]
    assert len(events("job.lease_lost")) == 1


class FlakyStore(JobStore):
    """The database refuses `failures` calls to `method`, then answers again."""

    def __init__(self, store: JobStore, method: str, failures: int) -> None:
        super().__init__(store.db, store.clock)
        self.left = failures
        real = getattr(self, method)

        def flaky(*args: object, **kwargs: object) -> object:
            if self.left > 0:
                self.left -= 1
                raise DatabaseUnavailable("database is locked")
            return real(*args, **kwargs)

        setattr(self, method, flaky)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", ["complete", "heartbeat", "fail"])
def test_an_outcome_waits_out_a_database_outage_and_is_recorded_once_it_ends(
    settings: Settings,
    store: JobStore,
    events: Callable[[str], list[logging.LogRecord]],
    method: str,
) -> None:
    settings = settings.model_copy(update={"lease_seconds": 600})
    data = b"\x00 binary" if method == "fail" else b"hello"
    job_id = drop(settings, store, "a.txt", data)
    flaky = FlakyStore(store, method, failures=3)
    make_runner(settings, flaky, FakeEngine()).run(once=True)
    job = store.get(job_id)
    assert job is not None
    assert job.status == ("failed" if method == "fail" else "succeeded")
    assert flaky.left == 0
    assert len(events("db.unavailable")) == 1
    ((recovered),) = events("db.recovered")
    assert recovered.fields["failed_calls"] == 3  # type: ignore[attr-defined]
    archived = settings.folder("failed" if method == "fail" else "done", "echo") / "a.txt"
    assert archived.read_bytes() == data


@pytest.mark.timeout(30)
def test_shutdown_during_an_outage_gives_up_without_recording(
    settings: Settings, store: JobStore, events: Callable[[str], list[logging.LogRecord]]
) -> None:
    settings = settings.model_copy(update={"lease_seconds": 600, "shutdown_timeout": 0})
    job_id = store.enqueue(NewJob("echo", "x"))
    flaky = FlakyStore(store, "complete", failures=10**6)
    runner = make_runner(settings, flaky, FakeEngine())
    thread = threading.Thread(target=runner.run)
    thread.start()
    while not events("db.unavailable"):
        threading.Event().wait(0.01)
    runner.stop.request()
    thread.join(timeout=20)
    assert not thread.is_alive()
    job = store.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.status == "running"  # its lease expires; it runs again
    (abandoned,) = events("job.abandoned")
    assert abandoned.fields["reason"].startswith("database unavailable at shutdown")  # type: ignore[attr-defined]


class KilledSandbox(Sandbox):
    """Every parsing task's child is killed from outside (the host's OOM killer)."""

    def call(self, task: str, *args: Any, deadline: float | None = None, beat: Any = None) -> Any:
        raise ChildKilled(f"the parsing child was killed from outside (SIGKILL) while {task}")


def test_a_parser_killed_from_outside_is_retried_not_failed(
    settings: Settings, store: JobStore
) -> None:
    job_id = drop(settings, store, "a.txt", b"hello")
    runner = Runner(
        settings,
        store,
        FakeEngine(),
        PIPELINES,
        "w1",
        StopFlags(),
        threading.Event(),
        sandbox=KilledSandbox(start=False),
    )
    runner.run(once=True)
    job = store.get(job_id)
    assert job is not None and (job.status, job.attempts) == ("queued", 1)
    assert job.error is not None and "killed from outside" in job.error
    assert (settings.folder("inbox", "echo") / "a.txt").read_bytes() == b"hello"
