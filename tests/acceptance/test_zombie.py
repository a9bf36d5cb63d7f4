"""Zombie: a daemon frozen (SIGSTOP) past its lease; another daemon on the same database
recovers and completes the job; thawed, the first can neither complete it nor publish."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import Daemon, db_rows, write_pipelines

pytestmark = pytest.mark.timeout(600)

LONG = """
prompt = "Count from one to one hundred in words, one number per line.\\n{{ input }}\\n"
output_format = "text"
[generation]
max_tokens = 60
temperature = 0.0
"""


def freeze_outside_a_transaction(daemon: Daemon, db: Path) -> None:
    """SIGSTOP the daemon at a moment it holds no SQLite write lock.

    A process frozen inside a write transaction blocks every writer on one machine (that is
    SQLite); this test is about leases, so it freezes the daemon between transactions.
    """
    for _ in range(50):
        daemon.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.05)
        probe = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            daemon.proc.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()
    raise AssertionError("the daemon always held the write lock")


def test_a_frozen_daemon_cannot_complete_or_publish_after_its_lease_was_taken(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    pipelines = write_pipelines(tmp_path / "pipelines", long=LONG)
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(pipelines),
        "EDGE_WORKER_N_CTX": "512",
        "EDGE_WORKER_LEASE_SECONDS": "3",
        "EDGE_WORKER_SWEEP_INTERVAL": "0.5",
    }
    a = start_daemon(env, "a")
    (data_dir / "inbox" / "long" / "job.txt").write_text("Go.\n")
    a.wait_for("job.claimed")
    time.sleep(0.2)  # generating (60 tokens take a second or more)
    freeze_outside_a_transaction(a, data_dir / "jobs.db")
    frozen_at = time.monotonic()

    b = start_daemon(env, "b", ready=False)
    b_worker = b.wait_for("daemon.ready")["worker"]
    recovered = b.wait_for("job.recovered")
    assert recovered["status"] == "queued"
    b.wait_for("job.succeeded", timeout=400)
    assert a.proc.poll() is None  # still frozen, still holding its (stale) token in memory

    output = data_dir / "outbox" / "long" / "job.txt.txt"
    published = output.stat()
    content = output.read_bytes()
    row_sql = (
        "SELECT status, lease_owner, result_text, output_path, crashes, attempts, finished_at "
        "FROM jobs"
    )
    (row,) = db_rows(data_dir, row_sql)
    assert row[:2] == ("succeeded", b_worker)
    assert content == (row[2] + "\n").encode()
    assert row[3:6] == (str(output), 1, 2)  # A's attempt counted as one crash, B's claim 2nd

    a.proc.send_signal(signal.SIGCONT)
    thawed = a.wait_for("job.abandoned", timeout=120)
    assert thawed["reason"] == "lease lost"
    time.sleep(1.5)  # give A every chance to publish or record something if it could
    print(f"A frozen for {time.monotonic() - frozen_at:.1f}s (lease 3s)")

    after = output.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        published.st_ino,
        published.st_mtime_ns,
        published.st_size,
    )
    assert output.read_bytes() == content
    assert db_rows(data_dir, row_sql) == [row]
    a_events = [e["event"] for e in a.events()]
    assert "job.lease_lost" in a_events
    assert "job.succeeded" not in a_events and "job.failed" not in a_events
    assert sorted(os.listdir(data_dir / "outbox" / "long")) == ["job.txt.txt"]  # no temp
    assert os.listdir(data_dir / "done" / "long") == ["job.txt"]
    assert os.listdir(data_dir / "inbox" / "long") == []

    assert a.stop() == 0
    assert b.stop() == 0
