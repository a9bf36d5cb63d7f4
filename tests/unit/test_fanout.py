"""Files that fan out into child jobs (CSV rows, OpenAI Batch lines): order, exactly-once
output and crash-resume, with a fake engine over a real SQLite store."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletion

from tests.clock import frozen
from tests.fakes import Crash, FakeEngine
from tests.harness import Runner
from worker.config import Settings
from worker.io.files import FileRef, content_digest, file_key
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import JobStore, NewJob, utcnow
from worker.run.stop import StopFlags

PIPELINES = {
    "rows": Pipeline(name="rows", prompt="{{ name }} says {{ input }}"),
    "batch": Pipeline(name="batch", reader="openai-batch"),
}


def echo_last_line(prompt: str) -> str:
    return " " + prompt.splitlines()[-1]


def drop(settings: Settings, store: JobStore, pipeline: str, name: str, data: bytes) -> int:
    folder = settings.folder("inbox", pipeline)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    info = (folder / name).stat()
    ref = FileRef(pipeline, name)
    key = file_key(ref, info.st_size, info.st_mtime_ns, content_digest(data))
    job_id = store.enqueue(
        NewJob(pipeline, source="file", source_path=ref.source_path, idempotency_key=key)
    )
    assert job_id is not None
    return job_id


def runner(settings: Settings, store: JobStore, engine: FakeEngine, worker: str = "w1") -> Runner:
    return Runner(settings, store, engine, PIPELINES, worker, StopFlags(), threading.Event())


def test_csv_rows_become_jobs_and_results_come_back_in_order(
    settings: Settings, store: JobStore
) -> None:
    csv_data = b"name,text\nAda,hello\nBob,x,extra\nCy,bye\n"
    parent = drop(settings, store, "rows", "people.csv", csv_data)
    engine = FakeEngine(echo_last_line)
    runner(settings, store, engine).run(once=True)
    job = store.get(parent)
    assert job is not None and job.status == "succeeded"
    assert job.result_text == "3 records: 2 succeeded, 1 failed"
    output = settings.folder("outbox", "rows") / "people.csv.jsonl"
    lines = [json.loads(x) for x in output.read_text().splitlines()]
    assert [(x["line"], x["status"], x["result"]) for x in lines] == [
        (2, "succeeded", "Ada says hello"),
        (3, "failed", None),
        (4, "succeeded", "Cy says bye"),
    ]
    assert lines[1]["error"] == "line 3 has 3 fields; the header has 2"
    assert lines[0]["record"] == {"name": "Ada", "text": "hello"}
    assert (settings.folder("done", "rows") / "people.csv").exists()
    assert len(engine.prompts) == 2


def batch_lines() -> bytes:
    lines = []
    for i in range(20):
        body = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": f"q{i}"}]}
        lines.append(
            json.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
        )
    # Requests that fail as an HTTP call would: each goes to the error file on its own.
    lines[3] = lines[3].replace('"gemma-3-270m"', '"gpt-9"')  # unknown model: 404
    lines[7] = lines[7].replace('"body": {', '"body": {"max_tokens": "x", ')  # bad request
    lines[11] = lines[11].replace('"messages": [', '"messages": "nope", "x": [')  # bad request
    return ("\n".join(lines) + "\n").encode()


def malformed_lines() -> bytes:
    """A file that breaks the format: it fails at validating, no line runs."""
    lines = batch_lines().decode().splitlines()
    lines[3] = "{oops"
    lines[7] = lines[6]  # duplicate custom_id r6
    lines[11] = lines[11].replace("/v1/chat/completions", "/v1/moderations")  # unknown url
    return ("\n".join(lines) + "\n").encode()


def read_results(settings: Settings) -> tuple[list[dict], list[dict], dict]:  # type: ignore[type-arg]
    outbox = settings.folder("outbox", "batch")
    (batch_file,) = outbox.glob("req.jsonl.batch_*.batch.json")
    batch = json.loads(batch_file.read_text())
    assert batch_file.name == f"req.jsonl.{batch['id']}.batch.json"
    outputs = [json.loads(x) for x in (outbox / batch["output_file_id"]).read_text().splitlines()]
    errors = [json.loads(x) for x in (outbox / batch["error_file_id"]).read_text().splitlines()]
    return outputs, errors, batch


def test_batch_with_bad_lines_gives_outputs_errors_and_counts(
    settings: Settings, store: JobStore
) -> None:
    parent = drop(settings, store, "batch", "req.jsonl", batch_lines())
    runner(settings, store, FakeEngine(echo_last_line)).run(once=True)
    outputs, errors, batch = read_results(settings)
    assert len(outputs) == 17 and len(errors) == 3
    assert batch["request_counts"] == {"total": 20, "completed": 17, "failed": 3}
    assert batch["status"] == "completed" and batch["id"] == f"batch_{parent}"
    assert batch["output_file_id"] == f"req.jsonl.batch_{parent}.output.jsonl"
    assert batch["error_file_id"] == f"req.jsonl.batch_{parent}.errors.jsonl"
    assert batch["errors"] is None
    assert [e["error"] for e in errors] == [None, None, None]
    assert [
        (e["custom_id"], e["response"]["status_code"], e["response"]["body"]["error"]["code"])
        for e in errors
    ] == [
        ("r3", 404, "model_not_found"),
        ("r7", 400, "invalid_request"),
        ("r11", 400, "invalid_request"),
    ]
    assert [e["response"]["body"]["error"]["param"] for e in errors] == [
        "model",
        "max_tokens",
        "messages",
    ]
    assert batch["usage"]["output_tokens"] > 0 and batch["model"] == "gemma-3-270m"
    for out in outputs:
        ChatCompletion.model_validate(out["response"]["body"])
    ids = [o["custom_id"] for o in outputs]
    assert ids == [f"r{i}" for i in range(20) if i not in (3, 7, 11)]
    assert outputs[0]["response"]["body"]["choices"][0]["message"]["content"] == "Assistant:"
    job = store.get(parent)
    assert job is not None and job.status == "succeeded"
    assert (settings.folder("done", "batch") / "req.jsonl").exists()


def expire_leases(store: JobStore, settings: Settings) -> None:
    store.clock = frozen(utcnow() + timedelta(seconds=settings.lease_seconds + 1))


def restarted(settings: Settings, store: JobStore, engine: FakeEngine, worker: str) -> Runner:
    """A daemon that has run for a lease period since w1 died (its recovery sweep waits
    that long after its start): the store's clock says so, the sweep's wait is left out."""
    later = runner(settings, store, engine, worker)
    later.recovery.start_grace = 0
    return later


def test_a_crash_mid_batch_resumes_without_rerunning_finished_lines(
    settings: Settings, store: JobStore
) -> None:
    drop(settings, store, "batch", "req.jsonl", batch_lines())
    crashing = FakeEngine(echo_last_line, crash_after=6)
    with pytest.raises(Crash):
        runner(settings, store, crashing, "w1").run(once=True)
    expire_leases(store, settings)
    resumed = FakeEngine(echo_last_line)
    restarted(settings, store, resumed, "w2").run(once=True)
    # 6 lines finished before the crash; the line in flight and the other 10 run after it
    assert len(crashing.prompts) == 6
    assert len(resumed.prompts) == 11
    assert not set(crashing.prompts) & set(resumed.prompts)
    outputs, errors, batch = read_results(settings)
    ids = [o["custom_id"] for o in outputs]
    assert len(ids) == len(set(ids)) == 17
    assert len(errors) == 3
    assert batch["request_counts"] == {"total": 20, "completed": 17, "failed": 3}


def test_a_crash_while_gathering_writes_the_same_files_again(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = drop(settings, store, "batch", "req.jsonl", batch_lines())
    real_complete = store.complete

    def complete_or_crash(job_id: int, *args: object, **kwargs: object) -> bool:
        if job_id == parent:
            raise Crash
        return real_complete(job_id, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "complete", complete_or_crash)
    with pytest.raises(Crash):
        runner(settings, store, FakeEngine(echo_last_line)).run(once=True)
    first = {p.name: p.read_bytes() for p in settings.folder("outbox", "batch").iterdir()}
    monkeypatch.setattr(store, "complete", real_complete)
    expire_leases(store, settings)
    engine = FakeEngine(echo_last_line)
    restarted(settings, store, engine, "w2").run(once=True)
    assert engine.prompts == []  # nothing ran again
    second = {p.name: p.read_bytes() for p in settings.folder("outbox", "batch").iterdir()}
    assert second == first
    job = store.get(parent)
    assert job is not None and job.status == "succeeded"


def test_cancelling_a_waiting_parent_cancels_its_children(
    settings: Settings, store: JobStore
) -> None:
    parent = drop(settings, store, "rows", "people.csv", b"name,text\nA,1\nB,2\n")
    with pytest.raises(Crash):
        runner(settings, store, FakeEngine(echo_last_line, crash_after=0)).run(once=True)
    assert store.cancel(parent)
    statuses = sorted(j.status for j in store.children(parent))
    assert statuses == ["cancelled", "cancelled"]


def test_a_plain_insert_still_works_beside_children(settings: Settings, store: JobStore) -> None:
    from sqlalchemy import text

    with store.db.begin() as conn:
        conn.execute(text("INSERT INTO jobs (pipeline, input_text) VALUES ('rows', 'hi')"))
    engine = FakeEngine(echo_last_line)
    Runner(
        settings,
        store,
        engine,
        {"rows": Pipeline(name="rows", prompt="{{ input }}")},
        "w",
        StopFlags(),
        threading.Event(),
    ).run(once=True)
    (job,) = store.list_jobs()
    assert (job.status, job.result_text, job.parent_id) == ("succeeded", "hi", None)


def test_output_path_for_records(tmp_path: Path) -> None:
    from worker.io.naming import output_name

    assert output_name("people.csv", "jsonl") == "people.csv.jsonl"
