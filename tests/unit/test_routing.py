"""The router on a real (temp) SQLite store with fake engines: model by model claims, a
swap once a model's queue is drained, file jobs of this instance only, jobs of a model
named per job, and pipelines no daemon serves."""

from __future__ import annotations

import time
from pathlib import Path

from tests.unit.test_model_manager import FakeEngine, record
from worker.config import Settings, load_settings
from worker.llm.loading import ModelConfig
from worker.llm.manager import ModelManager
from worker.llm.memory import Memory, MiB
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob, JobStore, NewJob
from worker.run.routing import ClaimArgs, ModelRouter

ME = "host-aaaaaaaaaaaa"
OTHER = "other-bbbbbbbbbbbb"
ARGS = ClaimArgs("w1", 30, (), None, 3)


def setup(tmp_path: Path, store: JobStore) -> tuple[Settings, ModelRouter, ModelManager]:
    gguf = str(tmp_path / "x.gguf")
    settings = load_settings(
        data_dir=tmp_path,
        models={"a": {"path": gguf, "parallel": 2}, "b": {"path": gguf, "parallel": 2}},
        model_max_wait=600,
        sweep_interval=0.01,
    )
    pipelines = {"pa": Pipeline(name="pa", model="a"), "pb": Pipeline(name="pb", model="b")}
    manager = ModelManager(
        {"a": record("a"), "b": record("b")},
        lambda config, threads: FakeEngine(1 * MiB),
    )
    budget = Memory(manager.views()[0].memory.host + 1)  # one model at a time
    store.register_worker("w1", "h", 1, "a,b", 4, instance=ME)
    router = ModelRouter(settings, store, pipelines, manager, budget, ME, "w1")
    return settings, router, manager


def enqueue(store: JobStore, pipeline: str, n: int, **kwargs: object) -> list[int]:
    ids = [store.enqueue(NewJob(pipeline, f"{pipeline} {i}", **kwargs)) for i in range(n)]  # type: ignore[arg-type]
    return [i for i in ids if i is not None]


def finish(store: JobStore, router: ModelRouter, jobs: list[ClaimedJob]) -> None:
    def complete(job: ClaimedJob) -> None:
        assert store.complete(job.id, job.lease_token, "ok", 1, 1)

    run = router.wrap(complete)
    for job in jobs:
        run(job)


def claim_until(router: ModelRouter, free: int, pipeline: str) -> list[ClaimedJob]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        jobs = router.claim(free, ARGS, solo=False)
        if jobs:
            return jobs
        time.sleep(0.01)
    raise AssertionError(f"no {pipeline} job claimed")


def test_jobs_are_claimed_model_by_model_and_a_drained_model_makes_room(
    tmp_path: Path, store: JobStore
) -> None:
    _, router, manager = setup(tmp_path, store)
    manager.load("a")
    enqueue(store, "pb", 2)
    enqueue(store, "pa", 3)
    first = router.claim(8, ARGS, solo=False)
    # Only a's jobs, at most its parallel; b waits for memory (a still has work).
    assert [j.pipeline for j in first] == ["pa", "pa"]
    assert router.claim(8, ARGS, solo=False) == []  # a is full, b does not fit
    finish(store, router, first)
    (last_a,) = router.claim(8, ARGS, solo=False)
    assert last_a.pipeline == "pa"
    finish(store, router, [last_a])
    # a's queue is drained: it is unloaded, b loads, then b's jobs are claimed.
    b_jobs = claim_until(router, 8, "pb")
    assert [j.pipeline for j in b_jobs] == ["pb", "pb"]
    views = {v.name: v for v in manager.views()}
    assert (views["a"].state.value, views["a"].evictions, views["b"].loads) == ("evicted", 1, 1)
    assert views["b"].in_hand == 2
    finish(store, router, b_jobs)
    assert {v.name: v.in_hand for v in manager.views()} == {"a": 0, "b": 0}


def test_file_jobs_of_another_instance_are_never_claimed(tmp_path: Path, store: JobStore) -> None:
    _, router, manager = setup(tmp_path, store)
    manager.load("a")
    theirs = enqueue(store, "pa", 1, source="file", source_path="pa/x.txt", origin=OTHER)
    mine = enqueue(store, "pa", 1, source="file", source_path="pa/y.txt", origin=ME)
    jobs = router.claim(8, ARGS, solo=False)
    assert [j.id for j in jobs] == mine
    assert router.claim(8, ARGS, solo=False) == []
    finish(store, router, jobs)
    assert not router.has_ready(())  # --once is done: the other's file is not ours
    job = store.get(theirs[0])
    assert job is not None and job.status == "queued"


def test_a_job_that_names_its_own_model_waits_for_that_model(
    tmp_path: Path, store: JobStore
) -> None:
    _, router, manager = setup(tmp_path, store)
    manager.load("a")
    (line,) = enqueue(store, "pa", 1)
    store.db.dispose()
    with store.db.begin() as conn:  # a batch line of pipeline pa that asked for model b
        from sqlalchemy import text

        conn.execute(text("UPDATE jobs SET model = 'b' WHERE id = :i"), {"i": line})
    jobs = claim_until(router, 8, "pa")
    assert [(j.id, j.model) for j in jobs] == [(line, "b")]
    assert {v.name: v.in_hand for v in manager.views()}["b"] == 1


def test_a_pipeline_no_daemon_serves_is_claimed_to_fail_but_another_instances_waits(
    tmp_path: Path, store: JobStore
) -> None:
    _, router, manager = setup(tmp_path, store)
    manager.load("a")
    (typo,) = enqueue(store, "nosuch", 1)
    (elsewhere,) = enqueue(store, "theirs", 1)
    # A daemon of another instance (stopped now) served `theirs`: its jobs wait for it.
    store.register_worker("w2", "h2", 2, "c", 2, instance=OTHER, pipelines={"theirs": "c"})
    store.worker_heartbeat("w2", state="stopped")
    jobs = router.claim(8, ARGS, solo=False)
    assert [j.id for j in jobs] == [typo]  # the runner defers it, then fails it
    assert router.claim(8, ARGS, solo=False) == []
    job = store.get(elsewhere)
    assert job is not None and job.status == "queued"
    assert router.serving() == {"pa": "a", "pb": "b"}


def test_the_opener_gets_the_thread_share(tmp_path: Path, store: JobStore) -> None:
    seen: list[int] = []

    def opener(config: ModelConfig, threads: int) -> FakeEngine:
        seen.append(threads)
        return FakeEngine(0)

    manager = ModelManager({"a": record("a")}, opener)
    manager.load("a")
    assert seen == [1]  # record() plans one thread


def test_the_instance_id_is_made_once_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    import pytest

    from worker.io.instance import InstanceIdError, instance_id

    first = instance_id(tmp_path / "a")
    assert first == (tmp_path / "a" / "instance-id").read_text().strip()
    assert instance_id(tmp_path / "a") == first
    assert instance_id(tmp_path / "b") != first  # another folder, another instance
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "instance-id").write_text("../../etc\n")
    with pytest.raises(InstanceIdError, match="not an instance id"):
        instance_id(tmp_path / "c")


def test_a_suspect_runs_alone_only_on_its_own_loaded_model(tmp_path: Path, store: JobStore) -> None:
    """A job that must run alone and names a model that is not loaded is not claimed
    for the loaded one (it waits); a suspect of the loaded model is, and holds it."""
    from sqlalchemy import text

    _, router, manager = setup(tmp_path, store)
    manager.load("a")
    (other_model,) = enqueue(store, "pa", 1)
    (own_model,) = enqueue(store, "pa", 1)
    store.db.dispose()
    with store.db.begin() as conn:  # both crashed workers: they run alone now
        conn.execute(text("UPDATE jobs SET crashes = 3"))
        conn.execute(text("UPDATE jobs SET model = 'b' WHERE id = :i"), {"i": other_model})
    assert router.solo_waiting(3, ())
    jobs = router.claim(8, ARGS, solo=True)
    assert [j.id for j in jobs] == [own_model]
    assert {v.name: v.in_hand for v in manager.views()} == {"a": 1, "b": 0}
    finish(store, router, jobs)
    assert router.claim(8, ARGS, solo=True) == []  # b is not loaded: its suspect waits
    # ... and the dispatcher is not told one waits (it would wait for a job it never
    # claims, and the plan that loads b would never run).
    assert not router.solo_waiting(3, ())
    assert {v.name: v.in_hand for v in manager.views()} == {"a": 0, "b": 0}
    job = store.get(other_model)
    assert job is not None and job.status == "queued"
