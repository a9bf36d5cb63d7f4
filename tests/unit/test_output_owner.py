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
from tests.unit import test_fanout as fanout
from tests.unit.test_batch_fidelity import jsonl, request
from tests.unit.test_runner import drop, make_runner
from tests.unit.test_runner_schedules import runner, sweep_job
from worker.config import Settings
from worker.io import safe_read
from worker.io.safe_read import InputRead
from worker.queue.jobs import JobStore
from worker.queue.models import Job
from worker.run.kinds import base

READ_OWNER, SWAPPER = 1000, 2000

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to other uids needs root")


def per_submitter(settings: Settings) -> Settings:
    return settings.model_copy(update={"outputs_per_submitter": True})


def owned_then_swapped(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """`path` belongs to READ_OWNER; right after the runner reads it, a file of the same
    bytes owned by SWAPPER takes its name."""
    os.chown(path, READ_OWNER, READ_OWNER)
    real = safe_read.read_input_file

    def read_then_swap(*args: Any, **kwargs: Any) -> InputRead:
        read = real(*args, **kwargs)
        swapped = path.with_name(".swapped")
        swapped.write_bytes(read.data)
        os.chown(swapped, SWAPPER, SWAPPER)
        os.replace(swapped, path)
        return read

    monkeypatch.setattr(base, "read_input_file", read_then_swap)


def succeeded(store: JobStore, job_id: int, outbox: Path) -> Job:
    """The job, which succeeded; nothing was written to the swapper's folder."""
    job = store.get(job_id)
    assert job is not None and job.status == "succeeded", job and job.error
    assert not (outbox / str(SWAPPER)).exists()
    return job


def test_a_swept_files_output_follows_the_owner_of_what_was_read(
    settings: Settings, store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = per_submitter(settings)
    source = tmp_path / "shared" / "q1.txt"
    source.parent.mkdir()
    source.write_text("hello")
    job_id = sweep_job(store, source, hashlib.sha256(b"hello").hexdigest())
    owned_then_swapped(monkeypatch, source)
    runner(settings, store, FakeEngine(), swept=tmp_path).run(once=True)
    outbox = settings.folder("outbox", "any")
    job = succeeded(store, job_id, outbox)
    assert job.output_path == str(outbox / str(READ_OWNER) / "shared" / "q1.txt.txt")
    assert source.stat().st_uid == SWAPPER  # the swap did happen


def test_an_inbox_files_output_follows_the_owner_of_what_was_read(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = per_submitter(settings)
    job_id = drop(settings, store, "a.txt", b"hello")
    owned_then_swapped(monkeypatch, settings.folder("inbox", "echo") / "a.txt")
    make_runner(settings, store, FakeEngine()).run(once=True)
    outbox = settings.folder("outbox", "echo")
    job = succeeded(store, job_id, outbox)
    assert job.output_path == str(outbox / str(READ_OWNER) / "a.txt.txt")


def test_a_row_files_output_follows_the_owner_of_what_was_read(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records are gathered long after the file was read: the owner read from the open
    file is recorded when the job expands, and the gather writes to that owner's folder
    (the name held another user's file by then)."""
    settings = per_submitter(settings)
    job_id = drop(settings, store, "rows.jsonl", b'{"text": "a"}\n{"text": "b"}\n')
    owned_then_swapped(monkeypatch, settings.folder("inbox", "echo") / "rows.jsonl")
    make_runner(settings, store, FakeEngine()).run(once=True)
    outbox = settings.folder("outbox", "echo")
    job = succeeded(store, job_id, outbox)
    assert job.input_owner == READ_OWNER
    assert job.output_path is not None
    assert Path(job.output_path).parent == outbox / str(READ_OWNER)
    assert len(Path(job.output_path).read_text().splitlines()) == 2


def test_a_batch_files_results_follow_the_owner_of_what_was_read(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenAI Batch kind: its output, error and status files."""
    settings = per_submitter(settings)
    data = jsonl([request("ok0"), request("ok1")])
    job_id = fanout.drop(settings, store, "batch", "req.jsonl", data)
    owned_then_swapped(monkeypatch, settings.folder("inbox", "batch") / "req.jsonl")
    fanout.runner(settings, store, FakeEngine(fanout.echo_last_line)).run(once=True)
    outbox = settings.folder("outbox", "batch")
    succeeded(store, job_id, outbox)
    written = [p for p in outbox.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".batch.json") for p in written), written
    assert {p.parent for p in written} == {outbox / str(READ_OWNER)}
