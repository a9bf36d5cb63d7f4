"""`max_concurrent`: the claim's per-pipeline caps, on a real (temp) SQLite store."""

from __future__ import annotations

import pytest

from worker.pipelines.spec import Pipeline
from worker.queue.jobs import JobStore, NewJob


def add(store: JobStore, pipeline: str, count: int, priority: int = 0) -> list[int]:
    ids = [
        store.enqueue(NewJob(pipeline, f"{pipeline} {i}", priority=priority)) for i in range(count)
    ]
    assert all(job_id is not None for job_id in ids)
    return [job_id for job_id in ids if job_id is not None]


def test_a_capped_pipeline_gets_at_most_its_limit_and_others_fill_the_rest(
    store: JobStore,
) -> None:
    add(store, "slow", 5)
    add(store, "fast", 3)
    claimed = store.claim("w1", 10, 30, limits={"slow": 2})
    assert sorted(j.pipeline for j in claimed) == ["fast"] * 3 + ["slow"] * 2
    # Another daemon gets nothing of `slow` while two run, however many slots it has.
    assert store.claim("w2", 10, 30, limits={"slow": 2}) == []
    first = next(j for j in claimed if j.pipeline == "slow")
    assert store.complete(first.id, first.lease_token, "done", 1, 1)
    (next_one,) = store.claim("w2", 10, 30, limits={"slow": 2})
    assert next_one.pipeline == "slow"
    # Without the cap the rest of the queue is claimed as before.
    assert [j.pipeline for j in store.claim("w3", 10, 30)] == ["slow", "slow"]


def test_capped_claims_keep_priority_order_across_pipelines(store: JobStore) -> None:
    low = add(store, "free", 2)
    high = add(store, "capped", 3, priority=5)
    claimed = store.claim("w", 3, 30, limits={"capped": 2})
    assert [j.id for j in claimed] == [*high[:2], low[0]]  # highest priority first


def test_a_claim_never_takes_more_than_asked_for(store: JobStore) -> None:
    add(store, "a", 4)
    add(store, "b", 4)
    claimed = store.claim("w", 3, 30, limits={"a": 3, "b": 3})
    assert len(claimed) == 3
    assert [j.pipeline for j in claimed] == ["a", "a", "a"]  # oldest first


def test_caps_respect_the_pipeline_filters(store: JobStore) -> None:
    add(store, "capped", 2)
    add(store, "other", 2)
    assert store.claim("w", 5, 30, exclude_pipelines=["capped"], limits={"capped": 1}) != []
    assert {j.pipeline for j in store.list_jobs(status="running")} == {"other"}
    (only,) = store.claim("w", 5, 30, pipelines=["capped"], limits={"capped": 1})
    assert only.pipeline == "capped"


def test_a_cap_of_a_pipeline_with_jobs_of_no_known_pipeline_leaves_those_alone(
    store: JobStore,
) -> None:
    add(store, "nosuch", 3)  # unknown pipelines are claimed (and failed with a message)
    assert len(store.claim("w", 5, 30, limits={"capped": 1})) == 3


def test_max_concurrent_is_a_positive_pipeline_field() -> None:
    assert Pipeline(name="p").max_concurrent is None
    assert Pipeline(name="p", max_concurrent=2).max_concurrent == 2
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Pipeline(name="p", max_concurrent=0)
