"""`submit --wait` returns once every job is final and its original is named."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import cast

import pytest

from worker.io import submit
from worker.io.files import FileRef
from worker.io.submit import SubmittedFile, wait_keys
from worker.queue.jobs import JobStore
from worker.queue.models import Job


@dataclass
class _Row:
    status: str
    source_path: str
    archived_path: str | None = None


class _Store:
    def __init__(self, row: _Row) -> None:
        self.row = row
        self.reads = 0

    def get_by_key(self, key: str) -> Job:
        self.reads += 1
        return cast(Job, self.row)


FILE = SubmittedFile(FileRef.parse("docs/a.txt", "docs"), "file:docs/a.txt:1")


def test_waits_for_the_original_to_be_named_after_the_final_status() -> None:
    row = _Row("succeeded", "docs/a.txt")
    store = _Store(row)
    # The daemon names the moved original a moment after it records the outcome.
    timer = threading.Timer(0.3, lambda: setattr(row, "archived_path", "/data/done/docs/a.txt"))
    timer.start()
    try:
        found = wait_keys(cast(JobStore, store), [FILE], timeout=10, poll=0.05)
    finally:
        timer.cancel()
    assert found[FILE.key].archived_path == "/data/done/docs/a.txt"
    assert store.reads > 1  # it did not return on the first, unarchived read


def test_a_move_that_never_comes_holds_the_wait_only_for_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(submit, "ARCHIVE_GRACE_SECONDS", 0.2)
    store = _Store(_Row("failed", "docs/a.txt"))
    found = wait_keys(cast(JobStore, store), [FILE], timeout=30, poll=0.05)
    assert found[FILE.key].status == "failed" and found[FILE.key].archived_path is None
    assert 3 <= store.reads < 100


def test_a_job_still_running_is_waited_for_until_the_timeout() -> None:
    store = _Store(_Row("running", "docs/a.txt"))
    found = wait_keys(cast(JobStore, store), [FILE], timeout=0.2, poll=0.05)
    assert found[FILE.key].status == "running"
