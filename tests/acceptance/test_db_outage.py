"""Database unavailable: another program holds SQLite's write lock for longer than the busy
timeout. The daemon keeps running, logs the outage once, loses no job, and its watcher and
lease keeper come back with it."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import db_rows, wait_path, wait_until_final, write_pipelines
from worker.queue.database import SQLITE_BUSY_TIMEOUT_MS

pytestmark = pytest.mark.timeout(300)

TERSE = """
prompt = "Text: {{ input }}\\nOne-line summary:"
output_format = "text"
[generation]
max_tokens = 8
temperature = 0.0
"""
SENTENCE = "The bridge reopens on Monday after repairs."


def test_sqlite_locked_for_long_is_waited_out_and_logged_once(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE)
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(pipelines),
        "EDGE_WORKER_N_CTX": "512",
        # The lease outlives the outage, so the job in hand is still this daemon's after it.
        "EDGE_WORKER_LEASE_SECONDS": "60",
    }
    daemon = start_daemon(env)
    db = data_dir / "jobs.db"
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO jobs (pipeline, input_text) VALUES ('terse', ?)", (SENTENCE,))
    daemon.wait_for("job.claimed")

    # Another program takes the write lock while the job generates, and keeps it until the
    # daemon has given up waiting (busy timeout) and said so, and a while longer.
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    locked_at = time.monotonic()
    try:
        (data_dir / "inbox" / "terse" / "during.txt").write_text(SENTENCE)
        daemon.wait_for("db.unavailable", timeout=SQLITE_BUSY_TIMEOUT_MS / 1000 + 120)
        daemon.wait_for("inbox.db_unavailable", timeout=SQLITE_BUSY_TIMEOUT_MS / 1000 + 30)
        time.sleep(2)
        assert daemon.proc.poll() is None
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    released = datetime.now(UTC).replace(tzinfo=None)
    print(f"write lock held {time.monotonic() - locked_at:.1f}s")

    rows = wait_until_final(data_dir, count=2, timeout=180)
    assert [s for _, s in rows] == ["succeeded", "succeeded"]  # the row and during.txt
    wait_path(data_dir / "done" / "terse" / "during.txt")  # moved after the row is final
    # The lease keeper (which also heartbeats the worker row) is alive after the outage.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ((beat,),) = db_rows(data_dir, "SELECT heartbeat_at FROM workers")
        if datetime.fromisoformat(beat) > released:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no worker heartbeat since the outage ended: {beat}")

    events = [e["event"] for e in daemon.events()]
    assert daemon.proc.poll() is None
    assert events.count("db.unavailable") == 1
    assert events.count("db.recovered") == 1
    assert events.count("inbox.db_unavailable") == 1
    assert events.count("inbox.db_recovered") == 1
    assert events.count("lease.renew_failed") <= 1
    assert "job.abandoned" not in events and "job.recovered" not in events
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log_path.read_text()
