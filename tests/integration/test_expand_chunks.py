"""Fan-out on real SQLite and PostgreSQL: children go in short chunks, a crash between
chunks is redone without duplicates, and claims are fair across files."""

from __future__ import annotations

import pytest

from worker.queue import families
from worker.queue.jobs import JobStore, NewChild, NewJob


def claim_file(store: JobStore, name: str) -> tuple[int, str]:
    job_id = store.enqueue(
        NewJob("p", source="file", source_path=f"p/{name}", idempotency_key=name)
    )
    assert job_id is not None
    (job,) = store.claim("w1", 1, lease_seconds=30, pipelines=["p"])
    assert job.id == job_id
    return job_id, job.lease_token


def children(count: int) -> list[NewChild]:
    return [NewChild(i, f"r{i}", error="bad" if i == 3 else None) for i in range(1, count + 1)]


def test_children_go_in_chunks_and_are_released_together(job_store: JobStore) -> None:
    parent, token = claim_file(job_store, "a.jsonl")
    assert job_store.expand(parent, token, "p", "item", children(25), chunk_rows=10)
    kids = job_store.children(parent)
    assert [k.item_index for k in kids] == list(range(1, 26))
    assert job_store.child_counts(parent) == {"queued": 24, "failed": 1}
    assert job_store.has_children(parent)
    job = job_store.get(parent)
    assert job is not None and job.status == "waiting"


def test_a_crash_between_chunks_is_redone_without_duplicates(
    job_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent, token = claim_file(job_store, "a.jsonl")
    real = families._release_children

    def crash(*_args: object) -> None:
        raise RuntimeError("killed between chunks")

    monkeypatch.setattr(families, "_release_children", crash)
    with pytest.raises(RuntimeError):
        job_store.expand(parent, token, "p", "item", children(25), chunk_rows=10)
    # Children are in, but held: not claimable, and the parent counts as not expanded.
    assert len(job_store.children(parent)) == 25
    assert not job_store.has_children(parent)
    assert job_store.claim("w2", 5, lease_seconds=30) == []
    assert job_store.wake_waiting() == []  # held children are not parents to wake

    monkeypatch.setattr(families, "_release_children", real)
    assert job_store.expand(parent, token, "p", "item", children(25), chunk_rows=7)
    assert len(job_store.children(parent)) == 25
    assert job_store.child_counts(parent) == {"queued": 24, "failed": 1}


def test_a_lost_lease_stops_the_expansion_before_the_next_chunk(job_store: JobStore) -> None:
    parent, token = claim_file(job_store, "a.jsonl")
    assert job_store.cancel(parent)
    assert not job_store.expand(parent, token, "p", "item", children(5), chunk_rows=2)
    assert job_store.children(parent) == []


def test_claims_interleave_files_and_put_new_plain_jobs_first(job_store: JobStore) -> None:
    first, token = claim_file(job_store, "a.jsonl")
    assert job_store.expand(first, token, "p", "item", [NewChild(i, "a") for i in range(1, 6)])
    second, token = claim_file(job_store, "b.jsonl")
    assert job_store.expand(second, token, "p", "item", [NewChild(i, "b") for i in range(1, 6)])
    plain = job_store.enqueue(NewJob("p", "later"))
    claimed = job_store.claim("w1", 5, lease_seconds=30)
    order = [(c.parent_id, c.item_index) for c in sorted(claimed, key=lambda c: c.id)]
    assert any(c.id == plain for c in claimed)  # arrived last, still among the first
    assert {(first, 1), (second, 1), (first, 2), (second, 2)} <= set(order)
