"""One tokens/s: `edge-worker status` and the `edge_worker_tokens_per_second` gauge agree."""

from __future__ import annotations

import pytest

from worker.ops.metrics import DaemonMetrics
from worker.ops.status import take_snapshot, to_json
from worker.queue.jobs import JobStore, NewJob, utcnow
from worker.queue.views import TOKENS_PER_SECOND_HELP, Throughput, throughput


def test_status_and_the_gauge_use_the_same_definition(store: JobStore) -> None:
    metrics = DaemonMetrics(store, "me", "gemma", slots=2, model_load_seconds=0.1)
    for text, tokens, seconds in (("a", 30, 2.0), ("b", 60, 0.5)):
        store.enqueue(NewJob("p", text))
        (job,) = store.claim("me", 1, 30)
        assert store.complete(job.id, job.lease_token, "r", 5, tokens)
        metrics.job_succeeded("p", 5, tokens, seconds)  # what the runner reports

    now = utcnow()
    table = throughput(store, now)
    assert (table.jobs, table.completion_tokens) == (2, 90)
    # 90 generated tokens in the last 60 s: 1.5 tokens/s, however long each job took
    # (per job time it would be 90 / 2.5 = 36) and however many ran side by side.
    assert table.tokens_per_second == pytest.approx(1.5)
    assert metrics.tokens_per_second() == pytest.approx(table.tokens_per_second)
    status = to_json(take_snapshot(store, "sqlite", now), lease_seconds=60)
    assert status["throughput"]["tokens_per_second"] == pytest.approx(1.5)
    assert "divided by 60 s" in TOKENS_PER_SECOND_HELP
    assert b"divided by 60 s" in metrics.render()  # the gauge's HELP says so


def test_no_jobs_is_zero_tokens_per_second() -> None:
    assert Throughput(60.0, 0, 0).tokens_per_second == 0.0
