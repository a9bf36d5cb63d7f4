"""SIGHUP reloads the pipelines: a new pipeline's inbox is taken at once, a file that
waited for it runs, and a broken pipeline file keeps the old set."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import TINY_PIPELINE, StartDaemon
from tests.acceptance.daemon import db_rows, wait_path, write_pipelines


def job_state(data_dir: Path, pipeline: str) -> list[tuple[str, str | None]]:
    return [
        (status, error)
        for status, error in db_rows(
            data_dir, "SELECT status, error FROM jobs WHERE pipeline = ? ORDER BY id", pipeline
        )
    ]


def wait_for_state(data_dir: Path, pipeline: str, count: int, status: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = job_state(data_dir, pipeline)
        if len(rows) >= count and all(s == status for s, _ in rows[:count]):
            return
        time.sleep(0.3)
    raise AssertionError(f"{pipeline}: {job_state(data_dir, pipeline)}")


@pytest.mark.timeout(300)
def test_sighup_adds_a_pipeline_and_a_broken_file_keeps_the_old_set(
    env: dict[str, str], data_dir: Path, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    pipelines = write_pipelines(tmp_path / "pipelines", tiny=TINY_PIPELINE)
    env = {**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}
    daemon = start_daemon(env)

    # A file for a pipeline that does not exist yet waits, queued, with the reason.
    (data_dir / "inbox" / "later").mkdir(parents=True)
    (data_dir / "inbox" / "later" / "early.txt").write_text("What is two plus two?")
    daemon.wait_for("job.deferred")
    ((status, error),) = job_state(data_dir, "later")
    assert status == "queued"
    assert error == "unknown pipeline 'later' (known: tiny); waiting for a reload"

    (pipelines / "later.toml").write_text(TINY_PIPELINE)
    daemon.proc.send_signal(signal.SIGHUP)
    done = daemon.wait_for("reload.done")
    assert done["pipelines"] == ["later", "tiny"]
    wait_for_state(data_dir, "later", 1, "succeeded")
    wait_path(data_dir / "done" / "later" / "early.txt")  # moved after the row is final

    # A broken file: the reload is refused with the reason, the old set stays in effect.
    (pipelines / "broken.toml").write_text("prompt = [not toml")
    daemon.proc.send_signal(signal.SIGHUP)
    failed = daemon.wait_for("reload.failed")
    assert "broken.toml" in failed["error"]
    assert failed["kept"] == ["later", "tiny"]
    (data_dir / "inbox" / "later" / "after.txt").write_text("Name a colour.")
    wait_for_state(data_dir, "later", 2, "succeeded")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
