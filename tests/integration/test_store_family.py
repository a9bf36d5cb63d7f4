"""Parent and child jobs and batch records on real SQLite and PostgreSQL."""

from __future__ import annotations

from worker.queue.jobs import JobStore, NewBatch, NewChild, NewJob


def claim_parent(store: JobStore) -> tuple[int, str]:
    parent = store.enqueue(NewJob("p", source="file", source_path="p/a.csv", idempotency_key="f"))
    assert parent is not None
    (job,) = store.claim("w1", 1, lease_seconds=30)
    return parent, job.lease_token


def test_expand_is_atomic_guarded_and_wakes_the_parent_when_children_are_final(
    job_store: JobStore,
) -> None:
    parent, token = claim_parent(job_store)
    children = [NewChild(2, "a"), NewChild(3, "b", error="bad row"), NewChild(4, "c")]
    batch = NewBatch("batch_1", "a.csv", "/v1/chat/completions", None, 3)
    assert not job_store.expand(parent, "wrong-token", "p", "item", children, batch)
    assert not job_store.has_children(parent) and job_store.get_batch("batch_1") is None
    assert job_store.expand(parent, token, "p", "item", children, batch)
    assert not job_store.expand(parent, token, "p", "item", children)  # only once
    job = job_store.get(parent)
    assert job is not None and job.status == "waiting" and job.lease_token is None
    kids = job_store.children(parent)
    assert [(k.item_index, k.status, k.error) for k in kids] == [
        (2, "queued", None),
        (3, "failed", "bad row"),
        (4, "queued", None),
    ]
    assert job_store.child_counts(parent) == {"queued": 2, "failed": 1}
    batch_row = job_store.batch_of_job(parent)
    assert batch_row is not None and batch_row.status == "in_progress"
    assert batch_row.request_total == 3

    first, second = job_store.claim("w1", 2, lease_seconds=30)
    assert {first.parent_id, second.parent_id} == {parent}
    assert job_store.complete(first.id, first.lease_token, "r", 1, 1)
    assert not job_store.wake_parent(parent)  # one child still running
    assert job_store.fail(second.id, second.lease_token, "boom", retry_at=None)
    assert job_store.wake_parent(parent)
    assert not job_store.wake_parent(parent)  # once
    (again,) = job_store.claim("w1", 1, lease_seconds=30)
    assert again.id == parent


def test_sweep_wakes_forgotten_parents_and_cancel_cascades(job_store: JobStore) -> None:
    parent, token = claim_parent(job_store)
    assert job_store.expand(parent, token, "p", "item", [NewChild(1, "x", error="bad")])
    assert job_store.wake_waiting() == [parent]

    other = job_store.enqueue(
        NewJob("p", source="file", source_path="p/b.csv", idempotency_key="g")
    )
    assert other is not None
    claimed = {j.id: j for j in job_store.claim("w1", 2, lease_seconds=30)}
    assert set(claimed) == {parent, other}
    job = claimed[other]
    assert job_store.expand(
        other, job.lease_token, "p", "item", [NewChild(1, "a"), NewChild(2, "b")]
    )
    assert job_store.cancel(other)
    assert sorted(k.status for k in job_store.children(other)) == ["cancelled", "cancelled"]
    assert job_store.update_batch("nope", (), status="x") is False
