"""Several real daemons on one PostgreSQL job table: exactly-once, recovery, LISTEN/NOTIFY.

These need the network (even loopback), so they carry the `postgres` marker and
skip without EDGE_WORKER_TEST_PG_URL; CI sets it.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import Daemon, daemon_env, run_cli
from tests.conftest import run_sql

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(420)]

JOBS = 300


def pg_env(
    tmp_path: Path, name: str, gguf: Path, url: str, pipelines: Path, **settings: object
) -> dict[str, str]:
    return daemon_env(
        tmp_path / name, gguf.parent, database_url=url, pipelines_dir=pipelines, **settings
    )


def wait_all_final(url: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    left: list[Any] = []
    while time.monotonic() < deadline:
        left = run_sql(url, "SELECT status, count(*) FROM jobs GROUP BY status")
        if dict(left).get("succeeded", 0) == count or not any(
            s in ("queued", "running") for s, _ in left
        ):
            return
        time.sleep(0.5)
    raise AssertionError(f"jobs not final within {timeout}s: {left}")


def test_three_daemons_run_300_jobs_exactly_once_and_recover_a_killed_one(
    pg_url: str,
    gguf: Path,
    tmp_path: Path,
    tiny_pipelines: Path,
    daemons: list[Daemon],
    start_daemon: StartDaemon,
) -> None:
    first = pg_env(tmp_path, "d0", gguf, pg_url, tiny_pipelines)
    assert run_cli(first, "db", "upgrade").returncode == 0
    for i in range(3):
        # One thread each: three daemons share two cores. A short lease: quick recovery.
        env = pg_env(
            tmp_path,
            f"d{i}",
            gguf,
            pg_url,
            tiny_pipelines,
            n_threads=1,
            lease_seconds=4,
            sweep_interval=1,
        )
        start_daemon(env, f"d{i}", ready=False)
    workers = [d.wait_for("daemon.ready")["worker"] for d in daemons]
    for daemon in daemons:
        daemon.wait_for("db.listening")

    run_sql(
        pg_url,
        "INSERT INTO jobs (pipeline, input_text) "
        "SELECT 'tiny', 'What is ' || g || ' plus one?' FROM generate_series(1, :n) g",
        n=JOBS,
    )

    # Midway, SIGKILL daemon 0 while it holds a job. SIGSTOP first, so that what the
    # table says it holds stays true until the kill lands.
    victim, victim_id = daemons[0], workers[0]
    deadline = time.monotonic() + 240
    while run_sql(pg_url, "SELECT count(*) FROM jobs WHERE status = 'succeeded'")[0][0] < JOBS / 3:
        assert time.monotonic() < deadline, "the daemons are not making progress"
        time.sleep(0.2)
    held: list[int] = []
    for _ in range(100):
        os.kill(victim.proc.pid, signal.SIGSTOP)
        time.sleep(0.2)  # statements already sent finish on the server
        held = [
            r[0]
            for r in run_sql(
                pg_url,
                "SELECT id FROM jobs WHERE status = 'running' AND lease_owner = :w",
                w=victim_id,
            )
        ]
        if held:
            victim.kill()
            break
        os.kill(victim.proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    assert held, "daemon 0 never held a job"
    assert 1 <= len(held) <= 2  # two slots: at most two jobs in its hands

    wait_all_final(pg_url, JOBS, timeout=300)
    # A job's `job.succeeded` is logged a moment after its row is final: stop the live
    # daemons (they finish what is in hand) before reading their logs.
    for daemon in daemons[1:]:
        assert daemon.stop(signal.SIGTERM, timeout=60) == 0
    rows = run_sql(pg_url, "SELECT id, status, attempts, crashes, lease_owner FROM jobs")
    assert len(rows) == JOBS
    assert Counter(r.status for r in rows) == {"succeeded": JOBS}
    # Only the job in the killed daemon's hands ran twice; it was finished by another.
    again = {r.id: r for r in rows if r.attempts != 1}
    assert set(again) == set(held), again
    for recovered in again.values():
        assert (recovered.attempts, recovered.crashes) == (2, 1)
        assert recovered.lease_owner in workers[1:]

    # Every result was written exactly once, across the three daemons' logs.
    succeeded = [e["job_id"] for d in daemons for e in d.events() if e["event"] == "job.succeeded"]
    assert len(succeeded) == len(set(succeeded)), "a job succeeded twice"
    # The victim may have recorded one last success and been stopped before logging it.
    unlogged = {r.id for r in rows} - set(succeeded)
    assert all(r.lease_owner == victim_id for r in rows if r.id in unlogged), unlogged
    assert len(unlogged) <= 2
    by_victim = [e["job_id"] for e in victim.events() if e["event"] == "job.succeeded"]
    assert not set(held) & set(by_victim)
    recoveries = [e for d in daemons[1:] for e in d.events() if e["event"] == "job.recovered"]
    assert sorted((e["job_id"], e["status"]) for e in recoveries) == [
        (h, "queued") for h in sorted(held)
    ]
    per_daemon = [sum(e["event"] == "job.succeeded" for e in d.events()) for d in daemons]
    assert all(n > 0 for n in per_daemon), per_daemon  # all three took part


def test_listen_wakes_an_idle_daemon_and_survives_a_dropped_connection(
    pg_url: str, gguf: Path, tmp_path: Path, tiny_pipelines: Path, start_daemon: StartDaemon
) -> None:
    # Polling every 30 s: a row claimed within seconds was announced by NOTIFY.
    env = pg_env(tmp_path, "d", gguf, pg_url, tiny_pipelines, poll_interval=30, n_threads=1)
    daemon = start_daemon(env, "d")
    daemon.wait_for("db.listening")
    time.sleep(1.0)  # the runner is now idle in its 30 s wait

    run_sql(pg_url, "INSERT INTO jobs (pipeline, input_text) VALUES ('tiny', 'first')")
    daemon.wait_for("job.claimed", timeout=10)  # not 30 s: NOTIFY woke it
    done = daemon.wait_for("job.succeeded", timeout=60)

    # The server drops the listening session (as at a restart): the daemon reconnects.
    terminated = run_sql(
        pg_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'edge-worker-listen' AND datname = current_database()",
    )
    assert terminated == [(True,)]
    daemon.wait_for("db.listen_lost", timeout=10)
    relistening = daemon.wait_for("db.listening", timeout=15, count=2)
    assert relistening["reconnected"] is True
    time.sleep(1.0)  # the catch-up wake-up has passed; the runner waits 30 s again

    run_sql(pg_url, "INSERT INTO jobs (pipeline, input_text) VALUES ('tiny', 'second')")
    daemon.wait_for("job.claimed", timeout=10, count=2)
    second = daemon.wait_for("job.succeeded", timeout=60, count=2)
    assert second["job_id"] != done["job_id"]
    assert run_sql(pg_url, "SELECT status, attempts FROM jobs ORDER BY id") == [
        ("succeeded", 1),
        ("succeeded", 1),
    ]
    assert daemon.stop(signal.SIGTERM, timeout=60) == 0
