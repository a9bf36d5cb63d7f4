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
from worker.batch.lines import BatchLine as CheckedLine
from worker.batch.lines import finish_lines
from worker.batch.request import (
    CHAT,
    LineError,
    parse_request,
    prompt_and_generation,
    response_body,
)
from worker.errors import GenerationInterrupted, PromptTooLong
from worker.io.files import FileRef
from worker.io.readers import too_many_records
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
    """The model-table name for a request's model; it must be the model this daemon serves."""
    name = resolve_model_name(context.settings, requested)
    if name != context.settings.model:
        raise UnknownModel(
            f"model {requested!r} ({name}) is not loaded; "
            f"this daemon serves {context.settings.model!r}"
        )
    return name


def expand(
    context: JobContext,
    job: ClaimedJob,
    pipeline: Pipeline,
    ref: FileRef,
    checked: list[CheckedLine],
) -> None:
    """Queue the valid lines (`checked` in the sandbox, see `worker.batch.lines`) as child
    jobs, record the bad ones as failed. InputError past max_records_per_file."""
    limit = context.settings.max_records_per_file
    if len(checked) > limit:
        raise too_many_records(limit)
    lines = finish_lines(checked, lambda name: _served_model(context, name))
    children = []
    errors = []
    for line in lines:
        if line.error is None:
            children.append(NewChild(line.line, json.dumps(line.request, ensure_ascii=False)))
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
        # Checked in the sandbox when the file expanded; its schema's grammar is made there
        # again below (the daemon never converts an untrusted schema itself).
        request = parse_request(str(payload.get("url")), payload.get("body"), check_schema=False)
        parsing = context.parsing(attempt)
        try:
            model = _served_model(context, request.model)
            if request.schema is not None:  # its grammar is made in the sandbox, not here
                max_tokens = request.generation.get("max_tokens", pipeline.generation.max_tokens)
                parsing.grammar(dict(request.schema), max_tokens)
            prompt, generation = prompt_and_generation(request, pipeline.generation, context.chat())
            strip = request.endpoint == CHAT
            answer = generate(
                context.engine_for(pipeline),
                prompt,
                generation,
                attempt.should_stop,
                strip=strip,
                validate=parsing.validate,
            )
        except UnknownModel as exc:
            raise LineError("model_not_found", str(exc.args[0]), "model") from None
        except ChatError as exc:
            raise LineError("invalid_request", str(exc), "messages") from None
        except PromptTooLong as exc:
            raise LineError("context_length_exceeded", str(exc)) from None
        except ResultInvalid as exc:
            raise LineError("invalid_response", str(exc), "response_format") from None
        except UnsupportedSchema as exc:  # refused in the sandbox, or by llama.cpp's parser
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
