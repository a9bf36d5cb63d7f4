"""With outputs_per_submitter, an output goes to the folder of the owner of the bytes that
were read, never to the owner of whatever holds the input's name by the time the output
is written (another user's file swapped in while the model ran)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeEngine
from tests.unit.test_runner import drop, make_runner
from tests.unit.test_runner_schedules import runner, sweep_job
from worker.config import Settings
from worker.io import safe_read
from worker.io.safe_read import InputRead
from worker.queue.jobs import JobStore
from worker.run.kinds import base

READ_OWNER, SWAPPER = 1000, 2000

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to other uids needs root")


def swap_after_read(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Right after the runner reads `path`, another user's file of the same bytes takes
    its name (owned by SWAPPER)."""
    real = safe_read.read_input_file

    def read_then_swap(*args: Any, **kwargs: Any) -> InputRead:
        read = real(*args, **kwargs)
        swapped = path.with_name(".swapped")
        swapped.write_bytes(read.data)
        os.chown(swapped, SWAPPER, SWAPPER)
        os.replace(swapped, path)
        return read

    monkeypatch.setattr(base, "read_input_file", read_then_swap)


def test_a_swept_files_output_follows_the_owner_of_what_was_read(
    settings: Settings, store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"outputs_per_submitter": True})
    source = tmp_path / "shared" / "q1.txt"
    source.parent.mkdir()
    source.write_text("hello")
    os.chown(source, READ_OWNER, READ_OWNER)
    job_id = sweep_job(store, source, hashlib.sha256(b"hello").hexdigest())
    swap_after_read(monkeypatch, source)
    runner(settings, store, FakeEngine(), swept=tmp_path).run(once=True)
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded", job and job.error
    outbox = settings.folder("outbox", "any")
    assert job.output_path == str(outbox / str(READ_OWNER) / "shared" / "q1.txt.txt")
    assert not (outbox / str(SWAPPER)).exists()
    assert source.stat().st_uid == SWAPPER  # the swap did happen


def test_an_inbox_files_output_follows_the_owner_of_what_was_read(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"outputs_per_submitter": True})
    job_id = drop(settings, store, "a.txt", b"hello")
    source = settings.folder("inbox", "echo") / "a.txt"
    os.chown(source, READ_OWNER, READ_OWNER)
    swap_after_read(monkeypatch, source)
    make_runner(settings, store, FakeEngine()).run(once=True)
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded", job and job.error
    outbox = settings.folder("outbox", "echo")
    assert job.output_path == str(outbox / str(READ_OWNER) / "a.txt.txt")
    assert not (outbox / str(SWAPPER)).exists()


def test_a_row_files_output_follows_the_owner_of_what_was_read(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records are gathered long after the file was read: the owner read from the open
    file is recorded when the job expands, and the gather writes to that owner's folder
    (the name held another user's file by then)."""
    settings = settings.model_copy(update={"outputs_per_submitter": True})
    job_id = drop(settings, store, "rows.jsonl", b'{"text": "a"}\n{"text": "b"}\n')
    source = settings.folder("inbox", "echo") / "rows.jsonl"
    os.chown(source, READ_OWNER, READ_OWNER)
    swap_after_read(monkeypatch, source)
    make_runner(settings, store, FakeEngine()).run(once=True)
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded", job and job.error
    assert job.input_owner == READ_OWNER
    assert job.output_path is not None
    outbox = settings.folder("outbox", "echo")
    assert Path(job.output_path).parent == outbox / str(READ_OWNER)
    assert len(Path(job.output_path).read_text().splitlines()) == 2
    assert not (outbox / str(SWAPPER)).exists()
