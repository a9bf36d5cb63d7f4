"""Poison: an input that kills the worker process is quarantined after N crashes and one
more run alone, while the daemon, restarted after each crash as systemd would, serves
every other job."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import db_rows, write_pipelines
from tests.acceptance.poison_daemon import POISON_MARKER

pytestmark = pytest.mark.timeout(300)

WRAPPER = [sys.executable, str(Path(__file__).with_name("poison_daemon.py"))]
TERSE = """
prompt = "Text: {{ input }}\\nOne-line summary:"
output_format = "text"
[generation]
max_tokens = 8
temperature = 0.0
"""
MAX_CRASHES = 3


def settled(data_dir: Path) -> bool:
    """The poison job is dead, every other job is final, and the inbox is empty."""
    if not (data_dir / "jobs.db").exists():
        return False
    rows = db_rows(data_dir, "SELECT status FROM jobs")
    inbox = data_dir / "inbox" / "terse"
    return (
        len(rows) == 4
        and all(s not in ("queued", "running") for (s,) in rows)
        and not list(inbox.iterdir())
    )


def test_an_input_that_aborts_the_worker_is_quarantined_and_others_succeed(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE)
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(pipelines),
        "EDGE_WORKER_N_CTX": "512",
        "EDGE_WORKER_LEASE_SECONDS": "3",
        "EDGE_WORKER_SWEEP_INTERVAL": "0.5",
        "EDGE_WORKER_RESCAN_INTERVAL": "1",
        "EDGE_WORKER_MAX_ATTEMPTS": str(MAX_CRASHES),
    }
    inbox = data_dir / "inbox" / "terse"
    inbox.mkdir(parents=True)
    (inbox / "poison.txt").write_text(f"Quarterly report. {POISON_MARKER} Sales rose.\n")
    for name in ("good1.txt", "good2.txt"):
        (inbox / name).write_text("The bridge reopens on Monday after repairs.\n")

    exits: list[int] = []
    life = 0
    while True:  # Restart=on-failure
        daemon = start_daemon(env, f"daemon{life}", program=WRAPPER, ready=False)
        if life == 0:
            daemon.wait_for("daemon.ready")
            with sqlite3.connect(data_dir / "jobs.db") as conn:
                conn.execute(
                    "INSERT INTO jobs (pipeline, input_text) VALUES ('terse', 'A row job.')"
                )
        deadline = time.monotonic() + 120
        while daemon.proc.poll() is None and not settled(data_dir):
            assert time.monotonic() < deadline, "neither a crash nor the end"
            time.sleep(0.2)
        if daemon.proc.poll() is None:
            break
        exits.append(daemon.proc.returncode)
        daemon.kill()
        life += 1
        assert life <= MAX_CRASHES + 2, f"still crash-looping after {exits}"

    # N crashes, then one more running alone (the proof that it is the cause).
    crashes = MAX_CRASHES + 1
    assert exits == [-signal.SIGABRT] * crashes
    assert daemon.stop() == 0
    rows = db_rows(
        data_dir,
        "SELECT coalesce(source_path, 'row'), status, error, crashes, attempts FROM jobs "
        "ORDER BY source_path",
    )
    poison = [r for r in rows if r[0] == "terse/poison.txt"]
    error = f"crashed the worker {crashes} times, the last time running alone"
    assert poison == [("terse/poison.txt", "dead", error, crashes, crashes)]
    others = [r[:2] for r in rows if r[0] != "terse/poison.txt"]
    assert others == [
        ("row", "succeeded"),
        ("terse/good1.txt", "succeeded"),
        ("terse/good2.txt", "succeeded"),
    ]
    # the original is kept in failed/ with the reason, like any failed file
    failed = data_dir / "failed" / "terse"
    assert json.loads((failed / "poison.txt.error.json").read_text())["error"] == error
    assert (failed / "poison.txt").exists()
    assert sorted(p.name for p in (data_dir / "done" / "terse").iterdir()) == [
        "good1.txt",
        "good2.txt",
    ]
