"""Shutdown under signals, and systemd notification over a real datagram socket."""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import db_rows, write_pipelines

pytestmark = pytest.mark.timeout(180)

# A pipeline that generates for a long time, so a signal lands mid-generation.
LONG = """
prompt = "Count from one to one thousand in words, one number per line.\\n\\n{{ input }}\\n"
[generation]
max_tokens = 1500
temperature = 0.0
"""


@pytest.fixture
def long_pipelines(tmp_path: Path) -> Path:
    return write_pipelines(tmp_path / "pipelines", long=LONG)


def test_sigterm_mid_generation_releases_the_job_and_notifies_systemd(
    data_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
    long_pipelines: Path,
    start_daemon: StartDaemon,
) -> None:
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.2)
    # Read as systemd does, all along: a receiver that stops reading fills its queue (10
    # datagrams), and the daemon drops what does not fit rather than block (MSG_DONTWAIT).
    messages: list[str] = []
    stop_reading = threading.Event()

    def receive() -> None:
        while not stop_reading.is_set():
            try:
                messages.extend(sock.recv(4096).decode().splitlines())
            except TimeoutError:
                continue

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(long_pipelines),
        "EDGE_WORKER_N_CTX": "2048",
        "EDGE_WORKER_SHUTDOWN_TIMEOUT": "2",
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "1000000",
    }
    daemon = start_daemon(env)
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        conn.execute("INSERT INTO jobs (pipeline, input_text) VALUES ('long', 'one')")
    daemon.wait_for("job.claimed")
    time.sleep(2.0)  # generating by now, and the watchdog has pinged

    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=30) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 2 + 10, f"exit took {elapsed:.1f}s with shutdown_timeout 2"

    ((status, attempts),) = db_rows(data_dir, "SELECT status, attempts FROM jobs")
    assert (status, attempts) == ("queued", 0)  # released, the attempt not counted
    assert any(e["event"] == "job.released" for e in daemon.events())

    stop_reading.set()
    reader.join()
    sock.close()
    kinds = [m for m in messages if m in ("READY=1", "WATCHDOG=1", "STOPPING=1")]
    assert "READY=1" in kinds and "WATCHDOG=1" in kinds and "STOPPING=1" in kinds, messages
    # The watchdog service may ping once before READY=1 (systemd takes pings at any time);
    # what matters is that pings go on after it, until STOPPING=1.
    after_ready = kinds[kinds.index("READY=1") :]
    assert "WATCHDOG=1" in after_ready[: after_ready.index("STOPPING=1")], kinds
    assert kinds[-1] == "STOPPING=1"
    assert any(m.startswith("STATUS=running 1 here") for m in messages), messages


def test_second_sigterm_stops_at_once(
    data_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
    long_pipelines: Path,
    start_daemon: StartDaemon,
) -> None:
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(long_pipelines),
        "EDGE_WORKER_SHUTDOWN_TIMEOUT": "600",
    }
    daemon = start_daemon(env)
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        conn.execute("INSERT INTO jobs (pipeline, input_text) VALUES ('long', 'one')")
    daemon.wait_for("job.claimed")
    time.sleep(0.5)
    daemon.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=30) == 0
    assert time.monotonic() - started < 10
    assert db_rows(data_dir, "SELECT status, attempts FROM jobs") == [("queued", 0)]
