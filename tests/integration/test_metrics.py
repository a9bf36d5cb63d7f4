"""Metrics from the runner's calls and the job table, on a real SQLite store; the loopback port."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.ops.metrics import DaemonMetrics, MetricsError, MetricsPublisher
from worker.queue.jobs import JobStore, NewJob

pytestmark = pytest.mark.timeout(60)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from Prometheus text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_follow_the_runner_and_gauges_follow_the_table(
    store: JobStore, tmp_path: Path
) -> None:
    for text in ("a", "b", "c"):
        store.enqueue(NewJob("summarize", text))
    assert len(store.claim("me", 1, 30)) == 1
    store.claim("someone-else", 1, 30)
    now = [100.0]
    metrics = DaemonMetrics(
        store, "me", "gemma", slots=1, model_load_seconds=0.42, clock=lambda: now[0]
    )
    publisher = MetricsPublisher(metrics, tmp_path / "m" / "metrics.prom", 60, port=None)
    publisher.start()
    # The runner and the recovery sweep call the metrics (their JobObserver) directly.
    metrics.job_succeeded("summarize", prompt_tokens=20, completion_tokens=8, seconds=2.0)
    metrics.job_succeeded("summarize", prompt_tokens=5, completion_tokens=4, seconds=0.05)
    metrics.job_failed("x", final=True)
    metrics.job_failed("x", final=False)
    metrics.jobs_recovered(1)
    publisher.stop()

    got = samples((tmp_path / "m" / "metrics.prom").read_text())
    processed = "edge_worker_jobs_processed_total"
    assert got[(processed, (("outcome", "succeeded"), ("pipeline", "summarize")))] == 2
    assert got[(processed, (("outcome", "failed"), ("pipeline", "x")))] == 1
    assert got[(processed, (("outcome", "retrying"), ("pipeline", "x")))] == 1
    assert got[("edge_worker_prompt_tokens_total", (("pipeline", "summarize"),))] == 25
    assert got[("edge_worker_generated_tokens_total", (("pipeline", "summarize"),))] == 12
    assert got[("edge_worker_jobs_recovered_total", ())] == 1
    # Generated tokens of the last 60 s over 60 s, as `edge-worker status` counts them.
    assert got[("edge_worker_tokens_per_second", ())] == pytest.approx(12 / 60)
    duration = "edge_worker_job_duration_seconds"
    assert got[(duration + "_count", (("pipeline", "summarize"),))] == 2
    assert got[(duration + "_bucket", (("le", "0.1"), ("pipeline", "summarize")))] == 1
    assert got[(duration + "_sum", (("pipeline", "summarize"),))] == pytest.approx(2.05)
    assert got[("edge_worker_model_load_seconds", ())] == 0.42
    assert got[("edge_worker_daemon_info", (("model", "gemma"), ("worker", "me")))] == 1
    # From the table: two running (one is ours), one queued.
    assert got[("edge_worker_database_up", ())] == 1
    assert got[("edge_worker_jobs", (("pipeline", "summarize"), ("status", "running")))] == 2
    assert got[("edge_worker_jobs", (("pipeline", "summarize"), ("status", "queued")))] == 1
    assert got[("edge_worker_jobs", (("pipeline", "summarize"), ("status", "failed")))] == 0
    assert got[("edge_worker_queue_depth", ())] == 1
    assert got[("edge_worker_busy_slots", ())] == 1

    now[0] += 61  # the rate covers the last minute only
    assert metrics.tokens_per_second() == 0.0
    assert not list((tmp_path / "m").glob("*.tmp"))  # written atomically


def test_database_outage_is_reported_not_raised(tmp_path: Path) -> None:
    from worker.queue.database import make_db_engine

    missing = JobStore(make_db_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}"))
    text = DaemonMetrics(missing, "me", "gemma", 1, 0.1).render().decode()
    got = samples(text)
    assert got[("edge_worker_database_up", ())] == 0
    assert ("edge_worker_queue_depth", ()) not in got
    assert got[("edge_worker_slots", ())] == 1


def test_port_serves_on_loopback_only(store: JobStore, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    publisher = MetricsPublisher(
        DaemonMetrics(store, "me", "gemma", 1, 0.1), tmp_path / "metrics.prom", 60, port=port
    )
    publisher.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        assert "edge_worker_busy_slots 0.0" in body
        assert publisher._server is not None
        assert publisher._server.httpd.server_address[0] == "127.0.0.1"
        # A second daemon on the same port fails with a message naming the setting.
        with pytest.raises(MetricsError, match="metrics_port"):
            MetricsPublisher(
                DaemonMetrics(store, "me2", "gemma", 1, 0.1), tmp_path / "other.prom", 60, port=port
            ).start()
    finally:
        publisher.stop()
