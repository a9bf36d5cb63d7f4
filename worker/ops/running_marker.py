"""The running marker: `<data_dir>/daemon.running` names the process that holds this data
folder's jobs. It is written (and fsynced) before the first claim and removed when the
daemon stops in order, so a marker found at start-up means the previous process died:
its jobs crashed with it and are requeued at once as suspects (run alone next), without
waiting for their leases to expire. Crash attribution survives the crash this way.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from worker.io.atomic import fsync_dir, write_atomic

MARKER_NAME = "daemon.running"


def _read(data_dir: Path) -> dict[str, object]:
    try:
        value = json.loads((data_dir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def previous_holder(data_dir: Path) -> str | None:
    """The worker id of a process that did not stop in order and is gone, or None.

    A holder that is still alive (frozen, or a second daemon wrongly started on the same
    folder) is not a crash: its jobs are left to their leases."""
    marker = _read(data_dir)
    worker = marker.get("worker")
    if not isinstance(worker, str) or not worker or _alive(marker.get("pid")):
        return None
    return worker


def mark_running(data_dir: Path, worker_id: str) -> None:
    """Record, durably, that `worker_id` (this process) now holds this data folder's jobs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    marker = {"worker": worker_id, "pid": os.getpid()}
    write_atomic(data_dir / MARKER_NAME, json.dumps(marker).encode(), mode=0o600)


def mark_stopped(data_dir: Path, worker_id: str) -> None:
    """The daemon stopped in order: nothing of it is in flight (the marker is removed
    only if it still names `worker_id`)."""
    if _read(data_dir).get("worker") != worker_id:
        return
    with contextlib.suppress(FileNotFoundError):
        (data_dir / MARKER_NAME).unlink()
        fsync_dir(data_dir)
