"""OpenAI Batch files as jobs: the file expands into one child per line (`BatchLine`),
and gathers the output, error and batch files when the last line is final."""

from __future__ import annotations

import json
from typing import Any

from worker.batch.files import (
    batch_files,
    batch_object,
    jsonl,
    request_counts,
    result_lines,
)
from worker.batch.ids import batch_id_for
from worker.batch.lines import read_batch
from worker.batch.request import (
    CHAT,
    LineError,
    parse_request,
    prompt_and_generation,
    response_body,
)
from worker.errors import GenerationInterrupted, PromptTooLong
from worker.io.files import FileRef
from worker.llm.chat import ChatError
from worker.llm.grammar import UnsupportedSchema
from worker.pipelines.inference import ResultInvalid, generate
from worker.pipelines.models import UnknownModel, resolve_model_name
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob, NewBatch, NewChild
from worker.queue.models import JobKind
from worker.run.kinds.base import (
    Attempt,
    ChildOfFile,
    JobContext,
    JobResult,
    StillLeased,
    publish,
)


def _served_model(context: JobContext, requested: str) -> str:
    """The model-table name for a request's model; it must be a model this daemon serves."""
    name = resolve_model_name(context.settings, requested)
    if not context.serves(name):
        raise UnknownModel(f"model {requested!r} ({name}) is not served by this daemon")
    return name


def _line_model(context: JobContext, pipeline: Pipeline, request: dict[str, object]) -> str | None:
    """The model a valid line needs when it is not its pipeline's (the job's `model`)."""
    body = request.get("body")
    requested = body.get("model") if isinstance(body, dict) else None
    if not isinstance(requested, str):
        return None
    name = _served_model(context, requested)
    return None if name == context.model_for(pipeline) else name


def expand(
    context: JobContext, job: ClaimedJob, pipeline: Pipeline, ref: FileRef, data: bytes
) -> None:
    """Check every line; queue the valid ones as child jobs, record the bad ones as failed."""
    limit = context.settings.max_records_per_file
    lines = read_batch(data, lambda name: _served_model(context, name), limit)
    children = []
    errors = []
    for line in lines:
        if line.error is None:
            assert line.request is not None
            text = json.dumps(line.request, ensure_ascii=False)
            model = _line_model(context, pipeline, line.request)
            children.append(NewChild(line.line, text, model=model))
            continue
        children.append(
            NewChild(line.line, json.dumps({"custom_id": line.custom_id}), str(line.error))
        )
        errors.append(
            {
                "code": line.error.code,
                "message": line.error.message,
                "param": line.error.param,
                "line": line.line,
            }
        )
    valid = [line.request for line in lines if line.request is not None]
    endpoint = str(valid[0]["url"]) if valid else CHAT
    batch = NewBatch(
        batch_id_for(job.id), ref.name, endpoint, json.dumps(errors) if errors else None, len(lines)
    )
    if not context.store.expand(
        job.id, job.lease_token, pipeline.name, JobKind.BATCH, children, batch
    ):
        raise GenerationInterrupted("lease lost before the batch lines were queued")
    context.record(lambda: context.store.wake_parent(job.id))  # every line was invalid
    write_status(context, pipeline.name, batch.id)


class BatchLine(ChildOfFile):
    """One request line of an OpenAI Batch file: the response body is the job's result."""

    kind = JobKind.BATCH

    def __init__(self, context: JobContext) -> None:
        self.context = context

    def run(self, attempt: Attempt) -> JobResult:
        context, job, pipeline = self.context, attempt.job, attempt.pipeline
        payload = json.loads(attempt.input_text or "{}")
        request = parse_request(str(payload.get("url")), payload.get("body"))
        try:
            model = _served_model(context, request.model)
            chat = context.chat(pipeline, job.model)
            prompt, generation = prompt_and_generation(request, pipeline.generation, chat)
            strip = request.endpoint == CHAT
            engine = context.engine_for(pipeline, job.model)
            answer = generate(engine, prompt, generation, attempt.should_stop, strip=strip)
        except UnknownModel as exc:
            raise LineError("model_not_found", str(exc.args[0]), "model") from None
        except ChatError as exc:
            raise LineError("invalid_request", str(exc), "messages") from None
        except PromptTooLong as exc:
            raise LineError("context_length_exceeded", str(exc)) from None
        except ResultInvalid as exc:
            raise LineError("invalid_response", str(exc), "response_format") from None
        except UnsupportedSchema as exc:  # a grammar llama.cpp refused for this vocabulary
            raise LineError("invalid_request", str(exc), "response_format") from None
        created = int(context.store.clock().timestamp())
        body = response_body(request, answer, model, created, job.id)
        text = json.dumps(body, ensure_ascii=False)
        return JobResult(text, answer.prompt_tokens, answer.completion_tokens)


def gather(
    context: JobContext,
    job: ClaimedJob,
    pipeline: Pipeline,
    ref: FileRef,
    still_leased: StillLeased,
) -> JobResult:
    """All lines are final: write the output, errors and batch files from the rows."""
    store = context.store
    batch = store.batch_of_job(job.id)
    assert batch is not None
    now = store.clock()
    if batch.finalizing_at is None and batch.cancelling_at is None:
        store.update_batch(batch.id, status="finalizing", finalizing_at=now)
    children = store.children(job.id)
    outputs, errors = result_lines(batch.id, children)
    files = batch_files(context.settings, pipeline.name, batch.input_name, batch.id)
    mode = context.settings.output_mode
    publish(still_leased, files.output, jsonl(outputs).decode(), mode)
    publish(still_leased, files.errors, jsonl(errors).decode(), mode)
    counts = request_counts(batch.request_total, store.child_counts(job.id))
    final: dict[str, Any] = {
        "output_file": files.output.name,
        "error_file": files.errors.name,
        "request_completed": counts["completed"],
        "request_failed": counts["failed"],
    }
    if batch.cancelling_at is not None:
        final.update(status="cancelled", cancelled_at=batch.cancelled_at or now)
    else:
        final.update(status="completed", completed_at=batch.completed_at or now)
    store.update_batch(batch.id, (), **final)
    text = write_status(context, pipeline.name, batch.id, still_leased)
    prompt_tokens = sum(c.prompt_tokens or 0 for c in children)
    completion_tokens = sum(c.completion_tokens or 0 for c in children)
    return JobResult(text, prompt_tokens, completion_tokens, files.output)


def live_object(context: JobContext, batch_id: str) -> dict[str, object] | None:
    """The batch object with request counts as they are now."""
    batch = context.store.get_batch(batch_id)
    if batch is None:
        return None
    counts = request_counts(batch.request_total, context.store.child_counts(batch.job_id))
    return batch_object(batch, counts)


def write_status(
    context: JobContext, pipeline: str, batch_id: str, still_leased: StillLeased = lambda: True
) -> str:
    """Write `<name>.<batch id>.batch.json` as the batch is now; returns its text."""
    value = live_object(context, batch_id)
    assert value is not None
    text = json.dumps(value, indent=2) + "\n"
    publish(
        still_leased,
        batch_files(context.settings, pipeline, str(value["input_file_id"]), batch_id).batch,
        text,
        context.settings.output_mode,
    )
    return text
