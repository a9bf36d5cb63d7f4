"""After a real daemon run: the metrics file agrees with the database, and `status` shows it."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import Daemon, db_rows, run_cli, wait_until_final

pytestmark = pytest.mark.timeout(240)


def read_metrics(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }


def test_metrics_file_matches_the_database_and_status_reports_the_run(
    data_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
    tiny_pipelines: Path,
    daemons: list[Daemon],
    start_daemon: StartDaemon,
) -> None:
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(tiny_pipelines),
        "EDGE_WORKER_METRICS_INTERVAL": "0.5",
        "EDGE_WORKER_UNKNOWN_PIPELINE_GRACE": "0",
    }
    daemon = start_daemon(env)
    started = daemon.wait_for("metrics.started")
    metrics_file = data_dir / "metrics.prom"
    assert started["file"] == str(metrics_file)
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        conn.executemany(
            "INSERT INTO jobs (pipeline, input_text) VALUES (?, ?)",
            [
                ("tiny", "What is one plus one?"),
                ("tiny", "Name a colour."),
                ("tiny", "Is water wet?"),
                ("nope", "unknown pipeline: fails"),
            ],
        )
    wait_until_final(data_dir, count=4)

    # --json while the daemon runs: stable keys for scripts
    result = run_cli(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["totals"]["succeeded"] == 3
    assert status["totals"]["failed"] == 1
    assert status["pipelines"]["tiny"]["succeeded"] == 3
    assert status["queue_depth"] == 0
    assert status["running"] == []
    assert status["throughput"]["jobs"] == 3  # all finished within the last minute
    assert status["throughput"]["completion_tokens"] > 0
    (worker,) = status["workers"]
    # daemon_env runs two slots
    assert (worker["state"], worker["model"], worker["slots"]) == ("running", "gemma-3-270m", 2)
    assert worker["heartbeat_age_seconds"] < 60
    plain = run_cli(env, "status")
    assert plain.returncode == 0, plain.stderr
    for heading in ("jobs", "last minute", "running", "daemons", "gemma-3-270m"):
        assert heading in plain.stdout

    assert daemon.stop(signal.SIGTERM) == 0  # the file is written once more at exit
    got = read_metrics(metrics_file)
    ((succeeded, prompt_tokens, completion_tokens),) = db_rows(
        data_dir,
        "SELECT count(*), sum(prompt_tokens), sum(completion_tokens) FROM jobs "
        "WHERE status = 'succeeded' AND pipeline = 'tiny'",
    )
    tiny = (("pipeline", "tiny"),)
    assert succeeded == 3
    assert got[("edge_worker_jobs_processed_total", (("outcome", "succeeded"), *tiny))] == 3
    assert (
        got[("edge_worker_jobs_processed_total", (("outcome", "failed"), ("pipeline", "nope")))]
        == 1
    )
    assert got[("edge_worker_prompt_tokens_total", tiny)] == prompt_tokens
    assert got[("edge_worker_generated_tokens_total", tiny)] == completion_tokens
    assert got[("edge_worker_job_duration_seconds_count", tiny)] == succeeded
    for pipeline, job_status, count in db_rows(
        data_dir, "SELECT pipeline, status, count(*) FROM jobs GROUP BY 1, 2"
    ):
        assert got[("edge_worker_jobs", (("pipeline", pipeline), ("status", job_status)))] == count
    assert got[("edge_worker_busy_slots", ())] == 0
    assert got[("edge_worker_queue_depth", ())] == 0
    assert got[("edge_worker_model_load_seconds", ())] > 0
    assert got[("edge_worker_tokens_per_second", ())] > 0
    # The engine's own counters: every generated token came from a decode call.
    assert got[("edge_worker_engine_generated_tokens", ())] >= completion_tokens
    assert got[("edge_worker_engine_decode_calls", ())] >= completion_tokens / 2
    assert got[("edge_worker_engine_prompt_tokens_evaluated", ())] > 0
