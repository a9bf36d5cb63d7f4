"""The running marker: `<data_dir>/daemon.running` names the process that holds this data
folder's jobs. It is written (and fsynced) before the first claim and removed when the
daemon stops in order, so a marker found at start-up means the previous process died:
its jobs crashed with it and are requeued at once as suspects (run alone next), without
waiting for their leases to expire. Crash attribution survives the crash this way.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from worker.io.atomic import fsync_dir, write_atomic

MARKER_NAME = "daemon.running"


def previous_holder(data_dir: Path) -> str | None:
    """The worker id of a process that did not stop in order, or None."""
    try:
        value = json.loads((data_dir / MARKER_NAME).read_text()).get("worker")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def mark_running(data_dir: Path, worker_id: str) -> None:
    """Record, durably, that `worker_id` now holds this data folder's jobs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(data_dir / MARKER_NAME, json.dumps({"worker": worker_id}).encode(), mode=0o600)


def mark_stopped(data_dir: Path) -> None:
    """The daemon stopped in order: nothing of it is in flight."""
    with contextlib.suppress(FileNotFoundError):
        (data_dir / MARKER_NAME).unlink()
        fsync_dir(data_dir)
