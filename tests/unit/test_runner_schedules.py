"""The runner's side of schedules, with a fake engine: sweep jobs and run windows."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.clock import frozen
from tests.fakes import FakeEngine
from tests.harness import Runner
from worker.config import Settings
from worker.llm.engine import Completion
from worker.llm.generation import Generation
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import JobStore, NewJob
from worker.run.stop import StopFlags
from worker.sources.sweep import sweep_key

# Tomorrow (the jobs' run_after is the real time of the insert, so the clock must be later).
_TOMORROW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
NIGHT = _TOMORROW.replace(hour=23)
NOON = _TOMORROW.replace(hour=12)
PIPELINES = {
    "night": Pipeline(name="night", prompt="Q: {{ input }}", window="22:00-06:00"),
    "any": Pipeline(name="any", prompt="Q: {{ input }}"),
}


def enqueue(store: JobStore, pipeline: str, text: str) -> int:
    job_id = store.enqueue(NewJob(pipeline, text))
    assert job_id is not None
    return job_id


def status(store: JobStore, job_id: int) -> str:
    job = store.get(job_id)
    assert job is not None
    return job.status


def runner(
    settings: Settings, store: JobStore, engine: FakeEngine, swept: Path | None = None
) -> Runner:
    """A runner; with `swept`, pipeline "any" sweeps `<swept>/**/*.txt` nightly."""
    pipelines = dict(PIPELINES)
    if swept is not None:
        pattern = str(swept / "**" / "*.txt")
        pipelines["any"] = Pipeline(
            name="any", prompt="Q: {{ input }}", schedule="0 2 * * *", sweep=(pattern,)
        )
    return Runner(settings, store, engine, pipelines, "w1", StopFlags(), threading.Event())


def sweep_job(store: JobStore, path: Path, digest: str = "0" * 64) -> int:
    job_id = store.enqueue(
        NewJob(
            "any",
            source="sweep",
            source_path=str(path),
            idempotency_key=sweep_key("any", str(path), digest),
        )
    )
    assert job_id is not None
    return job_id


def test_a_swept_file_is_read_in_place_and_never_moved(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    import hashlib

    source = tmp_path / "reports" / "q1.txt"
    source.parent.mkdir()
    source.write_text("hello")
    job_id = sweep_job(store, source, hashlib.sha256(b"hello").hexdigest())
    runner(settings, store, FakeEngine(), swept=tmp_path).run(once=True)
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded", job and job.error
    # The glob is `<tmp>/**/*.txt`: the output sits in the folders below its root.
    output = settings.folder("outbox", "any") / "reports" / "q1.txt.txt"
    assert output.read_text() == f"len={len('Q: hello')}\n"
    assert job.output_path == str(output)
    assert source.read_text() == "hello"  # still there, untouched
    assert job.archived_path is None
    assert not settings.folder("done", "any").exists()


def test_a_swept_file_changed_after_queueing_is_skipped(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    source = tmp_path / "q1.txt"
    source.write_text("edited since")
    job_id = sweep_job(store, source)  # queued with another digest
    runner(settings, store, FakeEngine(), swept=tmp_path).run(once=True)
    job = store.get(job_id)
    assert job is not None and job.status == "failed"
    assert job.error is not None and "changed after it was queued" in job.error
    assert source.exists()


def test_a_sweep_row_outside_its_pipelines_globs_fails_and_nothing_is_read(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    victim = tmp_path / "victim" / "secret.md"
    victim.parent.mkdir()
    victim.write_text("secret")
    engine = FakeEngine()
    job_id = sweep_job(store, victim)
    dotted = sweep_job(store, tmp_path / "swept" / ".." / "victim" / "secret.txt")
    runner(settings, store, engine, swept=tmp_path / "swept").run(once=True)
    for bad in (job_id, dotted):
        job = store.get(bad)
        assert job is not None and job.status == "failed"
        assert job.error is not None and job.error.startswith("invalid source_path")
    assert engine.prompts == []
    assert not settings.folder("outbox", "any").exists()


def test_jobs_outside_their_window_wait_queued(settings: Settings, store: JobStore) -> None:
    settings = settings.model_copy(update={"unknown_pipeline_grace": 0})
    night = enqueue(store, "night", "a")
    anytime = enqueue(store, "any", "b")
    unknown = enqueue(store, "typo", "c")
    store.clock = frozen(NOON)
    engine = FakeEngine()
    runner(settings, store, engine).run(once=True)  # returns: nothing it may claim is left
    statuses = {j.id: (j.status, j.attempts) for j in store.list_jobs()}
    assert statuses[night] == ("queued", 0)
    assert statuses[anytime] == ("succeeded", 1)
    assert statuses[unknown][0] == "failed"  # unknown pipelines still fail clearly
    store.clock = frozen(NIGHT)
    runner(settings, store, engine).run(once=True)
    assert status(store, night) == "succeeded"


class WindowClosingEngine(FakeEngine):
    """Moves the store's clock past the window while the first job runs."""

    def __init__(self, store: JobStore) -> None:
        super().__init__()
        self.store = store

    def complete(
        self,
        prompt: str,
        generation: Generation,
        should_stop: Callable[[], bool],
        shared_prefix: str | None = None,
    ) -> Completion:
        self.store.clock = frozen(NOON)
        return super().complete(prompt, generation, should_stop)


def test_a_job_running_when_the_window_closes_finishes(settings: Settings, store: JobStore) -> None:
    first = enqueue(store, "night", "a")
    second = enqueue(store, "night", "b")
    store.clock = frozen(NIGHT)
    engine = WindowClosingEngine(store)
    runner(settings, store, engine).run(once=True)
    assert len(engine.prompts) == 1
    assert status(store, first) == "succeeded"
    assert status(store, second) == "queued"
