"""The running marker: a process that died leaves its id behind; one that lives does not
count as dead, and an orderly stop removes only its own marker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from worker.ops.running_marker import MARKER_NAME, mark_running, mark_stopped, previous_holder


def test_a_dead_holder_is_named_a_live_one_is_not(tmp_path: Path) -> None:
    assert previous_holder(tmp_path) is None  # no marker: an orderly stop, or a first start
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    (tmp_path / MARKER_NAME).write_text(json.dumps({"worker": "w-dead", "pid": int(dead.stdout)}))
    assert previous_holder(tmp_path) == "w-dead"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / MARKER_NAME).write_text(json.dumps({"worker": "w-alive", "pid": alive.pid}))
        assert previous_holder(tmp_path) is None
    finally:
        alive.kill()
        alive.wait()


def test_an_orderly_stop_removes_only_its_own_marker(tmp_path: Path) -> None:
    mark_running(tmp_path, "mine")
    mark_stopped(tmp_path, "someone else")
    assert (tmp_path / MARKER_NAME).exists()
    mark_stopped(tmp_path, "mine")
    assert not (tmp_path / MARKER_NAME).exists()
    (tmp_path / MARKER_NAME).write_text("not json")
    assert previous_holder(tmp_path) is None
