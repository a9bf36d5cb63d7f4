"""A batch's `.batch.json` never goes back from a final status: the status written when
the lines are queued can lose the race with another slot's gather, and must not replace
the final file then (fake engine, real SQLite store, two runners as two slots)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes import FakeEngine
from tests.unit.test_batch_fidelity import jsonl, request
from tests.unit.test_fanout import drop, echo_last_line, runner
from worker.batch.files import holds_final_status
from worker.config import Settings
from worker.queue.jobs import JobStore
from worker.run.kinds import batch_lines
from worker.run.kinds.base import JobContext


def gather_elsewhere_first(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The first status write (the one once the lines are queued) reads the batch, then,
    before it publishes, another daemon's slot runs what is left and gathers: the order
    two slots can take. Returns the status that first write read."""
    real = batch_lines.live_object
    read: list[str] = []

    def read_then_let_another_slot_gather(
        context: JobContext, batch_id: str
    ) -> dict[str, object] | None:
        value = real(context, batch_id)
        if not read:
            assert value is not None
            read.append(str(value["status"]))
            runner(settings, store, FakeEngine(echo_last_line), "w2").run(once=True)
        return value

    monkeypatch.setattr(batch_lines, "live_object", read_then_let_another_slot_gather)
    return read


def status_file(settings: Settings) -> Path:
    (path,) = settings.folder("outbox", "batch").glob("req.jsonl.batch_*.batch.json")
    return path


@pytest.mark.parametrize("valid", [0, 3], ids=["every-line-invalid", "valid-lines"])
def test_a_late_in_progress_status_never_replaces_the_final_one(
    valid: int,
    settings: Settings,
    store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    events: Callable[[str], list[logging.LogRecord]],
) -> None:
    # Every line invalid: the expansion itself wakes the file job to gather. Valid lines:
    # the other slot runs them first, the last one wakes it.
    lines = [request(f"ok{i}") for i in range(valid)]
    lines += [request(f"bad{i}").replace('"gemma-3-270m"', '"gpt-9"') for i in range(2)]
    parent = drop(settings, store, "batch", "req.jsonl", jsonl(lines))
    read = gather_elsewhere_first(settings, store, monkeypatch)
    runner(settings, store, FakeEngine(echo_last_line)).run(once=True)
    assert read == ["in_progress"]  # the race happened: read before, published after
    job = store.get(parent)
    assert job is not None and job.status == "succeeded"
    on_disk = json.loads(status_file(settings).read_text())
    assert on_disk["status"] == "completed"
    assert on_disk["request_counts"] == {"total": valid + 2, "completed": valid, "failed": 2}
    assert status_file(settings).read_text() == job.result_text  # gather's, as it wrote it
    assert [r.__dict__["fields"] for r in events("batch.status_kept")] == [
        {"batch_id": f"batch_{parent}", "stale": "in_progress"}
    ]
    assert not list(settings.folder("outbox", "batch").glob(".*.tmp"))


def test_a_status_file_is_final_only_as_a_regular_file_of_ours(tmp_path: Path) -> None:
    final = tmp_path / "a.batch.json"
    final.write_text(json.dumps({"object": "batch", "status": "cancelled"}))
    assert holds_final_status(final)
    for status in ("validating", "in_progress", "finalizing", "cancelling"):
        (tmp_path / "b.batch.json").write_text(json.dumps({"status": status}))
        assert not holds_final_status(tmp_path / "b.batch.json")
    for text in ("[]", "{oops", '"completed"', ""):
        (tmp_path / "c.batch.json").write_text(text)
        assert not holds_final_status(tmp_path / "c.batch.json")
    assert not holds_final_status(tmp_path / "missing.batch.json")
    link = tmp_path / "link.batch.json"
    link.symlink_to(final)  # never read through a link: the write replaces the link
    assert not holds_final_status(link)
    fifo = tmp_path / "fifo.batch.json"
    os.mkfifo(fifo)
    done = threading.Event()

    def check() -> None:
        assert not holds_final_status(fifo)  # no writer: an open that blocked would hang
        done.set()

    threading.Thread(target=check, daemon=True).start()
    assert done.wait(5)


def test_a_status_file_the_machine_cannot_read_is_not_taken_for_not_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EIO, EMFILE...: unsure is not "not final"; the write that asked is not made.
    from worker.io.safe_read import TransientReadError

    path = tmp_path / "a.batch.json"
    path.write_text(json.dumps({"status": "completed"}))

    def failing(path: Path, max_bytes: int) -> bytes:
        raise TransientReadError(5, "cannot read input: Input/output error")

    monkeypatch.setattr("worker.batch.files.read_regular_file", failing)
    with pytest.raises(TransientReadError):
        holds_final_status(path)


def test_a_status_write_that_fails_once_the_lines_are_queued_loses_nothing(
    settings: Settings,
    store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    events: Callable[[str], list[logging.LogRecord]],
) -> None:
    # The lease is given back with the lines: nothing could retry the file job then. The
    # lines run, and gather writes the status file.
    parent = drop(settings, store, "batch", "req.jsonl", jsonl([request("ok0"), request("ok1")]))
    real = batch_lines.write_status
    calls: list[str] = []

    def first_write_fails(*args: object, **kwargs: object) -> str:
        calls.append("write")
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(batch_lines, "write_status", first_write_fails)
    runner(settings, store, FakeEngine(echo_last_line)).run(once=True)
    job = store.get(parent)
    assert job is not None and job.status == "succeeded"
    assert json.loads(status_file(settings).read_text())["status"] == "completed"
    (unwritten,) = events("batch.status_unwritten")
    assert unwritten.__dict__["fields"]["batch_id"] == f"batch_{parent}"
    assert not events("job.abandoned")  # before: reported as a lease lost
