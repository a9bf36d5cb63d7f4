"""OpenAI Batch files through the real daemon: per-line errors, OpenAI shapes, crash-resume."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion
from openai.types.shared import ErrorObject

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import db_rows, run_cli, wait_path

pytestmark = pytest.mark.timeout(600)

ALIASES = '{"gpt-4o-mini": "gemma-3-270m"}'


def request(custom_id: str, question: str, **body: Any) -> str:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": question},
        ],
        "max_tokens": 4,
        **body,
    }
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def twenty_lines() -> str:
    """Good lines, and three that fail as an HTTP request would (OpenAI's error file)."""
    lines = [request(f"q{i}", f"What is {i} plus {i}?") for i in range(20)]
    lines[4] = request("q4", "Hi", model="gpt-unknown")  # unknown model: 404
    lines[9] = request("q9", "Hi", max_tokens="many")  # malformed request: 400
    lines[14] = request("q14", "word " * 2000)  # over n_ctx (512): context_length_exceeded
    return "\n".join(lines) + "\n"


def batch_status(env: dict[str, str], batch_id: str) -> dict[str, Any]:
    result = run_cli(env, "batch", "show", batch_id)
    assert result.returncode == 0, result.stderr
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def wait_batch(
    env: dict[str, str], batch_id: str, until: Any, timeout: float = 480
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = batch_status(env, batch_id)
        if until(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def test_twenty_lines_three_bad_with_a_crash_in_the_middle(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    env = {
        **env,
        "EDGE_WORKER_MODEL_ALIASES": ALIASES,
        "EDGE_WORKER_LEASE_SECONDS": "3",
        "EDGE_WORKER_N_CTX": "512",
    }
    source = tmp_path / "questions.jsonl"
    source.write_text(twenty_lines())
    submitted = run_cli(env, "batch", "submit", str(source))
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    assert batch_id.startswith("batch_")
    assert batch_status(env, batch_id)["status"] == "validating"

    first = start_daemon(env, "first", ready=False)
    wait_batch(env, batch_id, lambda b: b.get("request_counts", {}).get("completed", 0) >= 5)
    first.stop(signal.SIGKILL)  # a crash: no clean shutdown
    done_before = {
        job_id
        for (job_id,) in db_rows(
            data_dir, "SELECT id FROM jobs WHERE source = 'batch' AND status = 'succeeded'"
        )
    }
    assert len(done_before) >= 5

    second = start_daemon(env, "second", ready=False)
    final = wait_batch(env, batch_id, lambda b: b["status"] == "completed")
    assert second.stop() == 0
    rerun = {e["job_id"] for e in second.events() if e.get("event") == "job.claimed"}
    assert not rerun & done_before  # finished lines were not run again

    assert final["request_counts"] == {"total": 20, "completed": 17, "failed": 3}
    outbox = data_dir / "outbox" / "batch"
    outputs = [
        json.loads(x)
        for x in (outbox / f"questions.jsonl.{batch_id}.output.jsonl").read_text().splitlines()
    ]
    errors = [
        json.loads(x)
        for x in (outbox / f"questions.jsonl.{batch_id}.errors.jsonl").read_text().splitlines()
    ]
    assert len(outputs) == 17 and len(errors) == 3
    custom_ids = [o["custom_id"] for o in outputs]
    assert len(set(custom_ids)) == 17  # each line exactly once
    assert not {"q4", "q9", "q14"} & set(custom_ids)
    for line in outputs:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.usage is not None and completion.usage.completion_tokens <= 4
        assert completion.model == "gemma-3-270m"
    # OpenAI's shape: error null, the failure as the HTTP response it would have been.
    assert [e["error"] for e in errors] == [None, None, None]
    assert [
        (e["custom_id"], e["response"]["status_code"], e["response"]["body"]["error"]["code"])
        for e in errors
    ] == [
        ("q4", 404, "model_not_found"),
        ("q9", 400, "invalid_request"),
        ("q14", 400, "context_length_exceeded"),
    ]
    for e in errors:
        ErrorObject.model_validate(e["response"]["body"]["error"])
    on_disk = json.loads((outbox / f"questions.jsonl.{batch_id}.batch.json").read_text())
    batch = Batch.model_validate(on_disk)
    assert batch.id == batch_id and batch.status == "completed"
    assert batch.request_counts is not None and batch.request_counts.total == 20
    assert batch.errors is None  # no line broke the file format
    assert batch.model == "gemma-3-270m" and batch.usage is not None
    assert batch.usage.output_tokens == sum(
        o["response"]["body"]["usage"]["completion_tokens"] for o in outputs
    )
    assert batch.completed_at is not None and batch.finalizing_at is not None
    assert on_disk["output_file_id"] == f"questions.jsonl.{batch_id}.output.jsonl"
    assert on_disk["error_file_id"] == f"questions.jsonl.{batch_id}.errors.jsonl"
    assert (data_dir / "done" / "batch" / "questions.jsonl").exists()
    listed = run_cli(env, "batch", "list")
    assert batch_id in listed.stdout and "completed" in listed.stdout


def test_submit_wait_json_output_and_cancel(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    env = {**env, "EDGE_WORKER_MODEL_ALIASES": ALIASES, "EDGE_WORKER_N_CTX": "512"}
    early = tmp_path / "early.jsonl"
    early.write_text(request("a", "Hi") + "\n")
    submitted = run_cli(env, "batch", "submit", str(early))
    early_id = submitted.stdout.strip()
    cancelled = run_cli(env, "batch", "cancel", early_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled before it was read" in cancelled.stdout

    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": 8}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    lines = [
        request(
            "j",
            "Reply in JSON.",
            max_tokens=24,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        ),
        request("m", "Hi", model="gpt-unknown"),
        request("c", "The sky is", model="gemma-3-270m", max_tokens=3),
    ]
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines) + "\n")
    daemon = start_daemon(env)
    result = run_cli(env, "batch", "submit", str(source), "--wait", timeout=400)
    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout[result.stdout.index("{") :])
    assert final["status"] == "completed"
    assert final["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    assert final["endpoint"] == "/v1/chat/completions"
    outbox = data_dir / "outbox" / "batch"
    outputs = {
        o["custom_id"]: o["response"]["body"]
        for o in map(json.loads, (outbox / final["output_file_id"]).read_text().splitlines())
    }
    answer = json.loads(outputs["j"]["choices"][0]["message"]["content"])
    assert set(answer) == {"answer"} and len(answer["answer"]) <= 8
    assert outputs["c"]["object"] == "chat.completion"
    (error,) = map(json.loads, (outbox / final["error_file_id"]).read_text().splitlines())
    assert error["error"] is None and error["response"]["status_code"] == 404
    assert (error["custom_id"], error["response"]["body"]["error"]["code"]) == (
        "m",
        "model_not_found",
    )
    assert batch_status(env, early_id)["status"] == "cancelled"
    assert daemon.stop() == 0


STOP_LINES = 80


def results(outbox: Path, final: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    def read(name: str | None) -> list[Any]:
        return [json.loads(x) for x in (outbox / name).read_text().splitlines()] if name else []

    return read(final["output_file_id"]), read(final["error_file_id"])


def test_expired_cancelled_and_malformed_batches_as_openai_ends_them(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    env = {**env, "EDGE_WORKER_MODEL_ALIASES": ALIASES, "EDGE_WORKER_N_CTX": "512"}
    inbox = data_dir / "inbox" / "batch"
    inbox.mkdir(parents=True)
    # Expiring: a one-second window (sidecar) for thirty lines.
    (inbox / "late.jsonl.meta.json").write_text(
        json.dumps({"completion_window": "1s", "metadata": {"team": "ops"}})
    )
    lines = [request(f"e{i}", f"Count to {i}.", max_tokens=8) for i in range(30)]
    (tmp_path / "late.jsonl").write_text("\n".join(lines) + "\n")
    # Cancelled: cancelled once a few of its lines are done.
    lines = [request(f"c{i}", f"Name {i} fruits.", max_tokens=16) for i in range(STOP_LINES)]
    (tmp_path / "stop.jsonl").write_text("\n".join(lines) + "\n")
    # Malformed: fails at validating, nothing runs.
    lines = [request("m0", "Hi"), "{not json", request("m0", "Again?")]
    (tmp_path / "broken.jsonl").write_text("\n".join(lines) + "\n")
    ids = {}
    for name in ("late", "stop", "broken"):
        submitted = run_cli(env, "batch", "submit", str(tmp_path / f"{name}.jsonl"))
        assert submitted.returncode == 0, submitted.stderr
        ids[name] = submitted.stdout.strip()
    daemon = start_daemon(env)
    wait_batch(env, ids["stop"], lambda b: b.get("request_counts", {}).get("completed", 0) >= 1)
    cancelled = run_cli(env, "batch", "cancel", ids["stop"])
    assert cancelled.returncode == 0, cancelled.stderr
    outbox = data_dir / "outbox" / "batch"
    for name, status, code in (
        ("late", "expired", "batch_expired"),
        ("stop", "cancelled", "batch_cancelled"),
    ):
        final = wait_batch(env, ids[name], lambda b, s=status: b["status"] in ("completed", s))
        batch = Batch.model_validate(final)
        assert batch.status == status, final
        outputs, errors = results(outbox, final)
        done = {o["custom_id"] for o in outputs}
        total, prefix = (30, "e") if name == "late" else (STOP_LINES, "c")
        assert len(done) < total and len(errors) > 0
        # Exactly the leftovers, each with the top-level error and no response.
        assert {e["custom_id"] for e in errors} == {f"{prefix}{i}" for i in range(total)} - done
        assert {e["error"]["code"] for e in errors} == {code}
        assert all(e["response"] is None for e in errors)
        for o in outputs:
            ChatCompletion.model_validate(o["response"]["body"])
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (
            len(done),
            len(errors),
        )
    late = Batch.model_validate(batch_status(env, ids["late"]))
    assert late.expired_at is not None and late.metadata == {"team": "ops"}
    assert late.completion_window == "1s" and late.expires_at == late.created_at + 1
    broken = wait_batch(env, ids["broken"], lambda b: b["status"] == "failed")
    parsed = Batch.model_validate(broken)
    assert parsed.errors is not None and parsed.errors.data is not None
    assert [(e.line, e.code) for e in parsed.errors.data] == [
        (2, "invalid_json"),
        (3, "duplicate_custom_id"),
    ]
    # The batch is `failed` before its file job is, and the original moves after that.
    wait_path(data_dir / "failed" / "batch" / "broken.jsonl")
    assert daemon.stop() == 0
