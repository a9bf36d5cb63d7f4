"""OpenAI Batch fidelity with a fake engine over a real SQLite store: where each error
goes, validation failures, the completion window (expired) and cancellation, checked
against the `openai` package's own types."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion
from openai.types.shared import ErrorObject

from tests.clock import frozen
from tests.fakes import Crash, FakeEngine
from tests.unit.test_fanout import drop, echo_last_line, read_results, runner
from worker.batch.fidelity import (
    BatchMeta,
    SidecarError,
    decode_meta,
    line_error_text,
    parse_error,
    parse_sidecar,
    window_seconds,
)
from worker.batch.request import LineError
from worker.config import Settings
from worker.queue.jobs import JobStore, utcnow


def request(custom_id: str, content: str = "Hi", url: str = "/v1/chat/completions") -> str:
    body: dict[str, Any] = {"model": "gemma-3-270m", "max_tokens": 4}
    if url.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": content}]
    else:
        body["prompt"] = content
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_error_texts_round_trip_code_message_and_param() -> None:
    text = line_error_text(LineError("invalid_request", "max_tokens must be (1)", "max_tokens"))
    assert parse_error(text) == ("invalid_request", "max_tokens must be (1)", "max_tokens")
    assert parse_error("model_not_found: no such model") == (
        "model_not_found",
        "no such model",
        None,
    )
    assert parse_error("internal error: KeyError")[0] == "server_error"
    assert parse_error("job ran past job_timeout (5 s) and was stopped")[0] == "request_timeout"
    assert window_seconds("24h") == 86400 and window_seconds("90s") == 90
    with pytest.raises(ValueError, match="completion_window"):
        window_seconds("1 week")
    assert parse_sidecar(b'{"completion_window": "2h", "metadata": {"a": "b"}}') == (
        "2h",
        {"a": "b"},
    )
    for bad in (b"[]", b'{"x": 1}', b'{"metadata": {"a": 1}}', b"{nope"):
        with pytest.raises(SidecarError):
            parse_sidecar(bad)
    legacy = decode_meta('[{"code": "x", "line": 2}]')  # a record written before
    assert legacy.errors == [{"code": "x", "line": 2}] and legacy.completion_window == "24h"
    assert decode_meta(BatchMeta(model="m").encode()).model == "m"


def test_http_errors_go_to_the_error_file_with_a_response(
    settings: Settings, store: JobStore
) -> None:
    lines = [request("good"), request("long", "word " * 3000), request("good2")]
    lines.insert(1, lines[0].replace('"gemma-3-270m"', '"gpt-9"').replace("good", "unknown"))
    drop(settings, store, "batch", "req.jsonl", jsonl(lines))
    runner(settings, store, FakeEngine(echo_last_line, n_ctx=512)).run(once=True)
    outputs, errors, batch = read_results(settings)
    assert [o["custom_id"] for o in outputs] == ["good", "good2"]
    for out in outputs:
        ChatCompletion.model_validate(out["response"]["body"])
    assert [e["custom_id"] for e in errors] == ["unknown", "long"]
    for line in errors:
        assert line["error"] is None and line["response"]["request_id"].startswith("req_")
        ErrorObject.model_validate(line["response"]["body"]["error"])
    unknown, long = (e["response"] for e in errors)
    assert unknown["status_code"] == 404
    assert unknown["body"]["error"]["code"] == "model_not_found"
    assert long["status_code"] == 400
    assert long["body"]["error"]["code"] == "context_length_exceeded"
    assert long["body"]["error"]["type"] == "invalid_request_error"
    parsed = Batch.model_validate(batch)
    assert parsed.status == "completed" and parsed.errors is None
    assert parsed.usage is not None and parsed.usage.total_tokens > 0
    assert parsed.completed_at is not None and parsed.in_progress_at is not None


def test_a_malformed_file_fails_at_validating_with_its_lines(
    settings: Settings, store: JobStore
) -> None:
    lines = [request(f"r{i}") for i in range(6)]
    lines[1] = "{oops"
    lines[3] = request("r2")  # duplicate custom_id
    lines[4] = request("r4", url="/v1/moderations")  # a url no model here serves
    parent = drop(settings, store, "batch", "bad.jsonl", jsonl(lines))
    engine = FakeEngine(echo_last_line)
    runner(settings, store, engine).run(once=True)
    assert engine.prompts == []  # nothing ran
    job = store.get(parent)
    assert job is not None and job.status == "failed"
    assert job.error is not None and "failed validation" in job.error
    (status_file,) = settings.folder("outbox", "batch").glob("bad.jsonl.*.batch.json")
    batch = Batch.model_validate(json.loads(status_file.read_text()))
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_json"),
        (4, "duplicate_custom_id"),
        (5, "invalid_url"),
    ]
    assert not list(settings.folder("outbox", "batch").glob("*.output.jsonl"))
    assert (settings.folder("failed", "batch") / "bad.jsonl").exists()
    assert store.children(parent) == []


def test_an_expired_batch_ends_its_leftovers_as_batch_expired(
    settings: Settings, store: JobStore
) -> None:
    inbox = settings.folder("inbox", "batch")
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "req.jsonl.meta.json").write_text(
        '{"completion_window": "60s", "metadata": {"project": "x"}}'
    )
    drop(settings, store, "batch", "req.jsonl", jsonl([request(f"r{i}") for i in range(8)]))
    with pytest.raises(Crash):
        runner(settings, store, FakeEngine(echo_last_line, crash_after=3)).run(once=True)
    store.clock = frozen(utcnow() + timedelta(minutes=5))  # past the window, leases too
    later = FakeEngine(echo_last_line)
    runner(settings, store, later, "w2").run(once=True)
    assert later.prompts == []  # nothing ran after the window
    outputs, errors, raw = read_results(settings)
    batch = Batch.model_validate(raw)
    done = {o["custom_id"] for o in outputs}
    assert len(done) == 3
    assert {e["custom_id"] for e in errors} == {f"r{i}" for i in range(8)} - done
    for line in errors:
        assert line["response"] is None and line["error"]["code"] == "batch_expired"
    assert batch.status == "expired" and batch.expired_at is not None
    assert batch.metadata == {"project": "x"} and batch.completion_window == "60s"
    assert batch.request_counts is not None and batch.request_counts.failed == 5
    assert batch.expires_at == batch.created_at + 60


def test_a_cancelled_batch_ends_its_leftovers_as_batch_cancelled(
    settings: Settings, store: JobStore
) -> None:
    parent = drop(
        settings, store, "batch", "req.jsonl", jsonl([request(f"r{i}") for i in range(6)])
    )
    with pytest.raises(Crash):
        runner(settings, store, FakeEngine(echo_last_line, crash_after=2)).run(once=True)
    record = store.batch_of_job(parent)
    assert record is not None
    assert store.update_batch(
        record.id, ("in_progress",), status="cancelling", cancelling_at=utcnow()
    )
    store.cancel_children(parent, "cancelled by operator")
    store.wake_parent(parent)
    store.clock = frozen(utcnow() + timedelta(seconds=settings.lease_seconds + 1))
    runner(settings, store, FakeEngine(echo_last_line), "w2").run(once=True)
    outputs, errors, raw = read_results(settings)
    batch = Batch.model_validate(raw)
    done = {o["custom_id"] for o in outputs}
    assert len(done) == 2
    assert {e["custom_id"] for e in errors} == {f"r{i}" for i in range(6)} - done
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert all(e["response"] is None for e in errors)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
