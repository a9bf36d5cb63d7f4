"""The runner with a fake engine over a real (temp) SQLite store: fast, no model."""

from __future__ import annotations

import json
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from tests.clock import frozen
from tests.fakes import FakeEngine
from tests.harness import Runner
from worker.config import Settings
from worker.errors import PromptTooLong
from worker.io.files import FileRef, content_digest, file_key
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import JobStore, NewJob, utcnow
from worker.run.stop import StopFlags

PIPELINES = {"echo": Pipeline(name="echo", prompt="Q: {{ input }}\nA:", output_format="text")}


def make_runner(settings: Settings, store: JobStore, engine: FakeEngine) -> Runner:
    return Runner(settings, store, engine, PIPELINES, "w1", StopFlags(), threading.Event())


def run_until_a_job_runs(runner: Runner, store: JobStore) -> threading.Thread:
    """`runner.run()` in a thread of its own, returned once a job is running."""
    thread = threading.Thread(target=runner.run)
    thread.start()
    while not store.list_jobs(status="running"):
        threading.Event().wait(0.01)
    return thread


def drop(settings: Settings, store: JobStore, name: str, data: bytes) -> int:
    folder = settings.folder("inbox", "echo")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    info = (folder / name).stat()
    ref = FileRef("echo", name)
    key = file_key(ref, info.st_size, info.st_mtime_ns, content_digest(data))
    job_id = store.enqueue(
        NewJob("echo", source="file", source_path=ref.source_path, idempotency_key=key)
    )
    assert job_id is not None
    return job_id


def test_file_job_writes_output_and_moves_original(settings: Settings, store: JobStore) -> None:
    job_id = drop(settings, store, "a.txt", b"hello")
    make_runner(settings, store, FakeEngine()).run(once=True)
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded"
    output = settings.folder("outbox", "echo") / "a.txt.txt"
    prompt = "Q: hello\nA:"
    assert output.read_text() == f"len={len(prompt)}\n"
    assert (settings.folder("done", "echo") / "a.txt").read_bytes() == b"hello"
    assert not (settings.folder("inbox", "echo") / "a.txt").exists()
    assert job.output_path == str(output)


def test_bad_input_fails_at_once_with_error_file(settings: Settings, store: JobStore) -> None:
    job_id = drop(settings, store, "bin.dat", b"\x00\x01")
    make_runner(settings, store, FakeEngine()).run(once=True)
    job = store.get(job_id)
    assert job is not None and (job.status, job.attempts) == ("failed", 1)
    failed = settings.folder("failed", "echo")
    reason = json.loads((failed / "bin.dat.error.json").read_text())
    assert reason["error"].startswith("binary content: NUL byte at offset 0")
    assert (failed / "bin.dat").read_bytes() == b"\x00\x01"


def test_prompt_too_long_is_not_retried(settings: Settings, store: JobStore) -> None:
    job_id = store.enqueue(NewJob("echo", "x"))
    engine = FakeEngine(fail=PromptTooLong("input is 5000 tokens; the context allows 1792"))
    make_runner(settings, store, engine).run(once=True)
    job = store.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.status == "failed"
    assert job.error == "input is 5000 tokens; the context allows 1792"
    assert len(engine.prompts) == 1


def test_unknown_pipeline_fails_with_the_known_names(settings: Settings, store: JobStore) -> None:
    settings = settings.model_copy(update={"unknown_pipeline_grace": 0})
    job_id = store.enqueue(NewJob("nope", "x"))
    make_runner(settings, store, FakeEngine()).run(once=True)
    job = store.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.status == "failed"
    assert job.error == "unknown pipeline 'nope' (known: echo)"


def test_engine_crash_is_retried_then_dead(settings: Settings, store: JobStore) -> None:
    job_id = store.enqueue(NewJob("echo", "x"))
    engine = FakeEngine(fail=RuntimeError("boom"))
    runner = make_runner(settings, store, engine)
    for attempt in range(settings.max_attempts):
        runner.run(once=True)
        later = utcnow() + timedelta(hours=attempt + 1)  # past the backoff
        store.clock = frozen(later)
    job = store.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.status == "dead"
    assert job.error == "gave up after 3 attempts: internal error: RuntimeError: boom"
    assert len(engine.prompts) == 3


def test_unwritable_outbox_is_retryable_and_leaves_input(
    settings: Settings, store: JobStore
) -> None:
    job_id = drop(settings, store, "a.txt", b"hello")
    outbox = settings.folder("outbox", "echo")
    outbox.parent.mkdir(parents=True, exist_ok=True)
    outbox.write_text("a file where the folder should be")
    make_runner(settings, store, FakeEngine()).run(once=True)
    job = store.get(job_id)
    assert job is not None and job.status == "queued"
    assert job.error is not None and job.error.startswith("cannot write output:")
    assert (settings.folder("inbox", "echo") / "a.txt").exists()


def test_table_job_with_null_input(settings: Settings, store: JobStore) -> None:
    job_id = store.enqueue(NewJob("echo", None))
    make_runner(settings, store, FakeEngine()).run(once=True)
    job = store.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.status == "failed"
    assert job.error == "input_text is NULL: nothing to process"


def test_a_row_over_max_input_bytes_fails_unread(settings: Settings, store: JobStore) -> None:
    settings = settings.model_copy(update={"max_input_bytes": 100})
    big = store.enqueue(NewJob("echo", "é" * 60))  # 120 bytes, 60 characters
    small = store.enqueue(NewJob("echo", "x" * 100))
    read: list[int] = []
    real = store.claimed_input

    def counted(job_id: int) -> str | None:
        read.append(job_id)
        return real(job_id)

    store.claimed_input = counted  # type: ignore[method-assign]
    make_runner(settings, store, FakeEngine()).run(once=True)
    job = store.get(big)  # type: ignore[arg-type]
    assert job is not None and job.status == "failed" and job.attempts == 1
    assert (
        job.error == "input_text is 120 bytes; the limit is 100 (max_input_bytes): split the input"
    )
    assert read == [small]  # the big text was never loaded
    done = store.get(small)  # type: ignore[arg-type]
    assert done is not None and done.status == "succeeded"


def test_removed_and_changed_inputs_are_skipped(settings: Settings, store: JobStore) -> None:
    gone = drop(settings, store, "gone.txt", b"one")
    changed = drop(settings, store, "changed.txt", b"two")
    (settings.folder("inbox", "echo") / "gone.txt").unlink()
    (settings.folder("inbox", "echo") / "changed.txt").write_bytes(b"three")
    engine = FakeEngine()
    make_runner(settings, store, engine).run(once=True)
    assert engine.prompts == []
    gone_job, changed_job = store.get(gone), store.get(changed)
    assert gone_job is not None and gone_job.error == (
        "input file was removed before it was processed"
    )
    assert changed_job is not None and changed_job.error is not None
    assert "changed after it was queued" in changed_job.error


@pytest.mark.timeout(20)
def test_shutdown_releases_a_running_job_without_counting_it(
    settings: Settings, store: JobStore
) -> None:
    settings = settings.model_copy(update={"shutdown_timeout": 0.2})
    job_id = store.enqueue(NewJob("echo", "x"))
    runner = make_runner(settings, store, FakeEngine(block=threading.Event()))
    thread = run_until_a_job_runs(runner, store)
    runner.stop.request()
    thread.join(timeout=10)
    assert not thread.is_alive()
    job = store.get(job_id)  # type: ignore[arg-type]
    assert job is not None and (job.status, job.attempts) == ("queued", 0)


@pytest.mark.timeout(20)
def test_a_cancelled_job_stops_and_is_not_completed(settings: Settings, store: JobStore) -> None:
    settings = settings.model_copy(update={"lease_seconds": 1.5})
    job_id = store.enqueue(NewJob("echo", "x"))
    assert job_id is not None
    engine = FakeEngine(block=threading.Event())
    runner = make_runner(settings, store, engine)
    thread = run_until_a_job_runs(runner, store)
    assert store.cancel(job_id)
    # the lease keeper notices within lease/3 and the engine sees should_stop()
    assert engine.interrupted.wait(10)
    runner.stop.request()
    thread.join(timeout=10)
    job = store.get(job_id)
    assert job is not None and job.status == "cancelled"


@pytest.mark.timeout(20)
def test_a_cancel_is_seen_within_about_a_second_whatever_the_lease(
    settings: Settings, store: JobStore
) -> None:
    settings = settings.model_copy(update={"lease_seconds": 600})  # renewals every 200 s
    job_id = store.enqueue(NewJob("echo", "x"))
    assert job_id is not None
    engine = FakeEngine(block=threading.Event())
    runner = make_runner(settings, store, engine)
    thread = run_until_a_job_runs(runner, store)
    assert store.cancel(job_id)
    assert engine.interrupted.wait(3)
    runner.stop.request()
    thread.join(timeout=10)


@pytest.mark.timeout(20)
def test_cancel_then_retry_runs_once_more_and_the_old_attempt_stays_stopped(
    settings: Settings, store: JobStore
) -> None:
    # Leases are per attempt: the retried job has a new token, so the cancelled attempt
    # neither keeps running nor stops renewing the new attempt's lease.
    settings = settings.model_copy(update={"lease_seconds": 600, "parallel": 2})
    job_id = store.enqueue(NewJob("echo", "x"))
    assert job_id is not None
    release = threading.Event()
    calls: list[int] = []

    def answer(prompt: str) -> str:
        calls.append(1)
        return "done"

    engine = FakeEngine(answer, block=release)
    runner = make_runner(settings, store, engine)
    thread = run_until_a_job_runs(runner, store)
    assert store.cancel(job_id)
    assert engine.interrupted.wait(3)  # the first attempt stopped
    engine.block = None
    assert store.retry(job_id)
    deadline = threading.Event()
    while (job := store.get(job_id)) is not None and job.status != "succeeded":
        assert not deadline.wait(0.05) and job.status in ("queued", "running"), job.status
    runner.stop.request()
    thread.join(timeout=10)
    assert len(engine.prompts) == 2  # the cancelled attempt and the retry, nothing more


def test_a_file_rewritten_while_its_old_version_runs_is_not_archived_and_runs_next(
    settings: Settings, store: JobStore
) -> None:
    inbox = settings.folder("inbox", "echo")
    old = drop(settings, store, "a.txt", b"version one")

    def rewrite_then_answer(prompt: str) -> str:
        if "version one" in prompt:  # the user saves a new version mid-generation
            (inbox / "a.txt").write_bytes(b"version two!")
            os.utime(inbox / "a.txt", ns=(1, 10**18))
        return f"answer to {prompt}"

    engine = FakeEngine(rewrite_then_answer)
    make_runner(settings, store, engine).run(once=True)
    job = store.get(old)
    assert job is not None and job.status == "succeeded"
    assert job.archived_path is None  # version one is gone: nothing of it to move
    assert (inbox / "a.txt").read_bytes() == b"version two!"  # not archived as done
    assert not (settings.folder("done", "echo") / "a.txt").exists()

    info = (inbox / "a.txt").stat()  # the watcher queues version two
    key = file_key(
        FileRef("echo", "a.txt"), info.st_size, info.st_mtime_ns, content_digest(b"version two!")
    )
    new = store.enqueue(
        NewJob("echo", source="file", source_path="echo/a.txt", idempotency_key=key)
    )
    assert new is not None
    make_runner(settings, store, engine).run(once=True)
    job = store.get(new)
    assert job is not None and job.status == "succeeded", job and job.error
    assert (settings.folder("done", "echo") / "a.txt").read_bytes() == b"version two!"


def test_a_row_naming_a_file_outside_its_inbox_fails_and_touches_nothing(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret.txt").write_text("secret")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in victim.iterdir())
    bad_paths = ["echo/../../../victim/secret.txt", "other/secret.txt", "echo/", "echo/a/b"]
    ids = [store.enqueue(NewJob("echo", source="file", source_path=p)) for p in bad_paths]
    engine = FakeEngine()
    make_runner(settings, store, engine).run(once=True)
    for job_id in ids:
        job = store.get(job_id)  # type: ignore[arg-type]
        assert job is not None and job.status == "failed"
        assert job.error is not None and job.error.startswith("invalid source_path")
    assert engine.prompts == []
    assert sorted((p.name, p.stat().st_mtime_ns) for p in victim.iterdir()) == before
    assert not settings.folder("done", "echo").exists()


def test_an_unknown_pipeline_waits_queued_within_the_grace_then_fails(
    settings: Settings, store: JobStore
) -> None:
    job_id = store.enqueue(NewJob("later", "x"))
    assert job_id is not None
    make_runner(settings, store, FakeEngine()).run(once=True)
    job = store.get(job_id)
    assert job is not None and (job.status, job.attempts) == ("queued", 0)
    assert job.error == "unknown pipeline 'later' (known: echo); waiting for a reload"
    assert job.run_after > utcnow()  # looked at again later, not in a busy loop
    store.clock = frozen(utcnow() + timedelta(seconds=settings.unknown_pipeline_grace + 60))
    make_runner(settings, store, FakeEngine()).run(once=True)
    job = store.get(job_id)
    assert job is not None and job.status == "failed"
    assert job.error == "unknown pipeline 'later' (known: echo)"


@pytest.mark.timeout(20)
def test_a_job_past_job_timeout_fails_with_the_limit_and_is_not_retried(
    settings: Settings, store: JobStore
) -> None:
    settings = settings.model_copy(update={"job_timeout": 0.3})
    job_id = store.enqueue(NewJob("echo", "x"))
    engine = FakeEngine(block=threading.Event())
    make_runner(settings, store, engine).run(once=True)
    job = store.get(job_id)  # type: ignore[arg-type]
    assert job is not None and (job.status, job.attempts) == ("failed", 1)
    assert job.error == "job ran past job_timeout (0.3 s) and was stopped"
