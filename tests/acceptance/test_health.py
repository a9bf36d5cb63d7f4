"""`/healthz` and `/metrics` on the loopback port of a real daemon (EDGE_WORKER_METRICS_PORT)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.acceptance.daemon import Daemon, wait_until_final

pytestmark = [
    pytest.mark.timeout(240),
    # `make test-offline` runs with no interface up, loopback included: no port to reach.
    pytest.mark.skipif(
        bool(os.environ.get("EDGE_WORKER_TEST_OFFLINE")),
        reason="the loopback port needs an interface; make test runs this",
    ),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_healthz_of_a_running_daemon(
    data_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
    tiny_pipelines: Path,
    daemons: list[Daemon],
) -> None:
    port = free_port()
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(tiny_pipelines),
        "EDGE_WORKER_METRICS_PORT": str(port),
    }
    daemon = Daemon(env, tmp_path / "daemon.log")
    daemons.append(daemon)
    assert daemon.wait_for("metrics.started")["port"] == port
    daemon.wait_for("daemon.ready")

    code, body = get(port, "/healthz")
    assert code == 200, body
    health = json.loads(body)
    assert {k: health[k] for k in ("ready", "busy_slots", "slots", "queue_depth")} == {
        "ready": True,
        "busy_slots": 0,
        "slots": 2,  # daemon_env runs two slots
        "queue_depth": 0,
    }
    assert health["last_finished_at"] is None  # nothing done yet

    with sqlite3.connect(data_dir / "jobs.db") as conn:
        conn.executemany(
            "INSERT INTO jobs (pipeline, input_text) VALUES ('tiny', ?)",
            [("Name a colour.",), ("Is water wet?",)],
        )
    wait_until_final(data_dir, count=2)
    # The runner records the outcome first; the job counts as finished, its slot as free
    # and the snapshot (queue_depth) as refreshed a moment later: ask again for a while.
    deadline = time.monotonic() + 10
    while True:
        code, body = get(port, "/healthz")
        assert code == 200, body
        after = json.loads(body)
        settled = after["queue_depth"] == 0 and after["busy_slots"] == 0
        if (settled and after["last_finished_at"] is not None) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after["queue_depth"] == 0 and after["busy_slots"] == 0
    assert after["last_finished_at"] is not None

    # The port answers from a snapshot refreshed when a job ends (and every
    # snapshot_interval): the table's numbers follow within a moment, not per request.
    succeeded = b'edge_worker_jobs{pipeline="tiny",status="succeeded"} 2.0'
    deadline = time.monotonic() + 10
    code, body = get(port, "/metrics")
    while succeeded not in body and time.monotonic() < deadline:
        time.sleep(0.2)
        code, body = get(port, "/metrics")
    assert code == 200
    assert succeeded in body
    assert get(port, "/")[0] == 404
    assert get(port, "/admin")[0] == 404

    assert daemon.stop() == 0
    with pytest.raises(urllib.error.URLError):  # the port closes with the daemon
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
