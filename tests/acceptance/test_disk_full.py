"""Disk full: the outbox is a tiny tmpfs that is full. The job fails as retryable with the
OS error, nothing partial is published, the input stays; once space is freed it succeeds."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import db_rows, write_pipelines

pytestmark = pytest.mark.timeout(240)

TERSE = """
prompt = "Text: {{ input }}\\nOne-line summary:"
output_format = "text"
[generation]
max_tokens = 8
temperature = 0.0
"""


def fill(path: Path) -> None:
    """Write zeros to `path` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


@pytest.fixture
def full_outbox(data_dir: Path) -> Iterator[Path]:
    """outbox/terse/ on a 64 KiB tmpfs, filled up by `filler`."""
    outbox = data_dir / "outbox" / "terse"
    outbox.mkdir(parents=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(outbox)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        fill(outbox / "filler")
        yield outbox
    finally:
        subprocess.run(["umount", "-l", str(outbox)], check=False)


def test_disk_full_is_retried_without_partial_output_and_succeeds_once_space_is_freed(
    data_dir: Path,
    env: dict[str, str],
    tmp_path: Path,
    full_outbox: Path,
    start_daemon: StartDaemon,
) -> None:
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE)
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(pipelines),
        "EDGE_WORKER_N_CTX": "512",
        "EDGE_WORKER_RETRY_BASE_SECONDS": "1",
        "EDGE_WORKER_MAX_ATTEMPTS": "20",
    }
    daemon = start_daemon(env)
    inbox = data_dir / "inbox" / "terse"
    (inbox / "report.txt").write_text("The bridge reopens on Monday after repairs.\n")

    retrying = daemon.wait_for("job.retrying", timeout=120)
    assert retrying["error"].startswith("cannot write output: [Errno 28] No space left on device")
    ((status, error),) = db_rows(data_dir, "SELECT status, error FROM jobs")
    assert status in ("queued", "running")  # waiting for its retry, or retrying
    assert error is None or "No space left on device" in error
    assert (inbox / "report.txt").exists()  # the input stays where it is
    assert sorted(p.name for p in full_outbox.iterdir()) == ["filler"]  # nothing partial
    assert not (data_dir / "done").exists() and not (data_dir / "failed").exists()

    (full_outbox / "filler").unlink()
    done = daemon.wait_for("job.succeeded", timeout=120)
    ((status, result, attempts),) = db_rows(
        data_dir, "SELECT status, result_text, attempts FROM jobs"
    )
    assert status == "succeeded" and attempts >= 2
    output = full_outbox / "report.txt.txt"
    assert done["output"] == str(output)
    assert output.read_text() == result + "\n"
    assert sorted(p.name for p in full_outbox.iterdir()) == ["report.txt.txt"]
    assert (data_dir / "done" / "terse" / "report.txt").exists()
    assert not (inbox / "report.txt").exists()
    assert daemon.stop() == 0
