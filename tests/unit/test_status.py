"""`status`: daemon states and the JSON shape, from plain data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from worker.ops.status import Snapshot, render, to_json, worker_state
from worker.queue.models import Worker
from worker.queue.views import RunningJob, Throughput

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def daemon(state: str, seconds_ago: float) -> Worker:
    beat = NOW - timedelta(seconds=seconds_ago)
    return Worker(
        id=f"h:{state}",
        host="h",
        pid=1,
        model="m",
        slots=1,
        state=state,
        started_at=beat,
        heartbeat_at=beat,
    )


def test_a_running_daemon_without_heartbeat_for_a_lease_is_gone() -> None:
    assert worker_state(daemon("running", 10), NOW, lease_seconds=60) == "running"
    assert worker_state(daemon("running", 61), NOW, lease_seconds=60) == "gone"
    assert worker_state(daemon("stopped", 3600), NOW, lease_seconds=60) == "stopped"


def test_json_has_stable_keys_and_totals() -> None:
    snapshot = Snapshot(
        now=NOW,
        database="sqlite:///x.db",
        counts={("a", "queued"): 2, ("a", "succeeded"): 5, ("b", "queued"): 1},
        throughput=Throughput(60.0, jobs=3, completion_tokens=90),
        running=[RunningJob(7, "a", "h:running", 1, NOW - timedelta(seconds=12))],
        workers=[daemon("running", 5)],
    )
    data = to_json(snapshot, lease_seconds=60)
    assert sorted(data) == [
        "database",
        "generated_at",
        "models",
        "pipelines",
        "queue_depth",
        "running",
        "throughput",
        "totals",
        "waiting",
        "workers",
    ]
    assert data["queue_depth"] == 3
    assert data["totals"]["queued"] == 3 and data["totals"]["succeeded"] == 5
    assert data["pipelines"]["b"] == {
        "queued": 1,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "dead": 0,
        "cancelled": 0,
        "waiting": 0,
    }
    assert data["throughput"]["jobs_per_minute"] == 3.0
    assert data["throughput"]["tokens_per_second"] == 1.5
    assert data["running"][0]["age_seconds"] == 12.0
    assert data["workers"][0]["state"] == "running"
    assert data["workers"][0]["heartbeat_age_seconds"] == 5.0
    assert len(render(snapshot, lease_seconds=60).renderables) == 4


def test_sd_notify_never_blocks_on_a_receiver_that_stopped_reading(tmp_path: Path) -> None:
    import socket
    import threading

    from worker.ops.sd_notify import Notifier

    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    notifier = Notifier(str(path))
    done = threading.Event()

    def flood() -> None:
        for _ in range(2000):  # far past the receiver's queue (max_dgram_qlen)
            notifier.send("WATCHDOG=1")
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(10), "send blocked on a full receiver queue"
    receiver.close()
