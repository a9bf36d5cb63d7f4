"""OpenAI Batch files as jobs: the file expands into one child per line (`BatchLine`),
and gathers the output, error and batch files when the last line is final. A file may
mix chat, completion and embedding lines: each goes to the engine of its own model."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from worker.batch.embeddings import (
    EMBEDDINGS,
    EmbeddingRequest,
    check_dimensions,
    embedding_response,
)
from worker.batch.fidelity import (
    DEFAULT_WINDOW,
    MAX_SIDECAR_BYTES,
    BatchMeta,
    SidecarError,
    decode_meta,
    line_error_text,
    parse_sidecar,
    summed_usage,
    validation_errors,
)
from worker.batch.files import (
    FINAL_BATCH,
    batch_files,
    batch_object,
    error_of,
    holds_final_status,
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
    parse_line,
    prompt_and_generation,
    response_body,
)
from worker.errors import GenerationInterrupted, InputError, PromptTooLong
from worker.io.files import FileRef
from worker.io.naming import fits
from worker.io.readers import too_many_records
from worker.io.safe_read import read_regular_file
from worker.llm.chat import ChatError
from worker.llm.grammar import UnsupportedSchema
from worker.logs import event
from worker.pipelines.inference import ResultInvalid, generate
from worker.pipelines.models import UnknownModel, model_kind, resolve_model_name
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob, NewBatch, NewChild
from worker.queue.models import Batch, Job, JobKind, JobStatus
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


def _embed(
    context: JobContext, request: EmbeddingRequest, model: str, attempt: Attempt
) -> JobResult:
    """A `/v1/embeddings` line: every input's vector, batched with other jobs' inputs."""
    if model_kind(context.settings, model) != "embed":
        raise LineError(
            "invalid_request",
            f"model {request.model!r} generates text; /v1/embeddings needs an embedding model "
            '(kind = "embed" in the model table)',
            "model",
        )
    embedder = context.embedder_for(attempt.pipeline, model)
    check_dimensions(request, request.model, embedder.dimensions)
    result = embedder.embed(request.inputs, attempt.should_stop)
    body = embedding_response(request, result.vectors, result.total_tokens, model)
    return JobResult(json.dumps(body), result.total_tokens, 0)


def expand(
    context: JobContext,
    job: ClaimedJob,
    pipeline: Pipeline,
    ref: FileRef,
    checked: list[CheckedLine],
    owner: int,
) -> None:
    """Queue the valid lines (`checked` in the sandbox, see `worker.batch.lines`) as child
    jobs, record the bad ones as failed (each with its HTTP-style error). A file that
    breaks the format fails at `validating` and none of its lines runs
    (`fail_validation`). InputError past max_records_per_file. `owner`: the uid owning
    the file that was read, recorded for its result files' folder."""
    limit = context.settings.max_records_per_file
    if len(checked) > limit:
        raise too_many_records(limit)
    lines = finish_lines(checked, lambda name: _served_model(context, name))
    window, metadata = read_sidecar(context, ref)
    problems = file_problems(lines)
    if problems:
        fail_validation(context, job, pipeline, ref, problems, window, metadata, owner)
    children = []
    for line in lines:
        if line.error is None:
            assert line.request is not None
            text = json.dumps(line.request, ensure_ascii=False)
            model = _line_model(context, pipeline, line.request)
            children.append(NewChild(line.line, text, model=model))
            continue
        children.append(
            NewChild(
                line.line, json.dumps({"custom_id": line.custom_id}), line_error_text(line.error)
            )
        )
    valid = [line.request for line in lines if line.request is not None]
    endpoint = str(valid[0]["url"]) if valid else CHAT
    meta = BatchMeta(
        completion_window=window, metadata=metadata, model=context.settings.model, owner=owner
    )
    batch = NewBatch(batch_id_for(job.id), ref.name, endpoint, meta.encode(), len(lines))
    if not context.store.expand(
        job.id, job.lease_token, pipeline.name, JobKind.BATCH, children, batch, owner=owner
    ):
        raise GenerationInterrupted("lease lost before the batch lines were queued")
    context.record(lambda: context.store.wake_parent(job.id))  # every line was invalid
    try:
        write_status(context, pipeline.name, batch.id, owner=owner)
    except (OSError, InputError) as exc:
        # The lines are queued and the lease is given back: there is nothing to retry or
        # fail. The file appears at gather, which writes the final status.
        event("batch.status_unwritten", logging.WARNING, batch_id=batch.id, error=str(exc))


def read_sidecar(context: JobContext, ref: FileRef) -> tuple[str, dict[str, str] | None]:
    """(completion_window, metadata) from `<name>.meta.json` (or `<stem>.meta.json`) beside
    the input; the defaults when there is none. InputError if it is unusable."""
    inbox = ref.inbox_path(context.settings)
    for name in dict.fromkeys((f"{ref.name}.meta.json", f"{Path(ref.name).stem}.meta.json")):
        if not fits(name):  # a name near 255 bytes can have no sidecar
            continue
        try:
            data = read_regular_file(inbox.with_name(name), MAX_SIDECAR_BYTES)
        except FileNotFoundError:
            continue
        try:
            return parse_sidecar(data)
        except SidecarError as exc:
            raise InputError(f"invalid {name}: {exc}") from None
    return DEFAULT_WINDOW, None


def file_problems(lines: list[CheckedLine]) -> list[dict[str, Any]]:
    """The `errors.data` that fail a file at `validating` (empty: the file is valid)."""
    bad = [(line.line, line.error) for line in lines if line.error is not None]
    return validation_errors(bad)


def fail_validation(
    context: JobContext,
    job: ClaimedJob,
    pipeline: Pipeline,
    ref: FileRef,
    problems: list[dict[str, Any]],
    window: str,
    metadata: dict[str, str] | None,
    owner: int,
) -> NoReturn:
    """Record the batch as `failed` with its `errors.data`, write its batch object, and
    fail the file job (its original goes to failed/ with the reason)."""
    meta = BatchMeta(errors=problems, completion_window=window, metadata=metadata, owner=owner)
    batch_id = batch_id_for(job.id)
    context.store.add_failed_batch(job.id, NewBatch(batch_id, ref.name, CHAT, meta.encode(), 0))
    write_status(context, pipeline.name, batch_id, owner=owner)
    first = problems[0]
    raise InputError(
        f"batch file failed validation: {len(problems)} error(s); "
        f"line {first['line']}: {first['code']}: {first['message']}"
    )


def check_expiry(context: JobContext, job: ClaimedJob) -> None:
    """A line claimed after its batch's completion window ends the batch: every line still
    waiting is marked `batch_expired` (one statement), and so is this one."""
    if job.parent_id is None:
        return
    batch = context.store.batch_of_job(job.parent_id)
    if batch is None:
        return
    meta = decode_meta(batch.errors_json)
    now = context.store.clock()
    if now <= meta.expires_at(batch.created_at):
        return
    message = (
        f"batch_expired: the batch passed its completion window ({meta.completion_window}) "
        "before this request ran"
    )
    context.store.cancel_children(job.parent_id, message, keep=job.id)
    raise InputError(message)  # this line fails the same way; its end wakes the parent


class BatchLine(ChildOfFile):
    """One request line of an OpenAI Batch file: the response body is the job's result."""

    kind = JobKind.BATCH

    def __init__(self, context: JobContext) -> None:
        self.context = context

    def run(self, attempt: Attempt) -> JobResult:
        check_expiry(self.context, attempt.job)
        try:
            return self._run(attempt)
        except LineError as exc:  # the errors file reports its code and param, OpenAI's way
            raise InputError(line_error_text(exc)) from None

    def _run(self, attempt: Attempt) -> JobResult:
        context, job, pipeline = self.context, attempt.job, attempt.pipeline
        payload = json.loads(attempt.input_text or "{}")
        # Checked in the sandbox when the file expanded; a schema's grammar is made there
        # again below (the daemon never converts an untrusted schema itself).
        request = parse_line(str(payload.get("url")), payload.get("body"), check_schema=False)
        parsing = context.parsing(attempt)
        try:
            model = _served_model(context, request.model)
            if isinstance(request, EmbeddingRequest):
                return _embed(context, request, model, attempt)
            if model_kind(context.settings, model) == "embed":
                raise LineError(
                    "invalid_request",
                    f"model {request.model!r} is an embedding model: send its requests to "
                    f"{EMBEDDINGS}",
                    "model",
                )
            if request.schema is not None:  # its grammar is made in the sandbox, not here
                max_tokens = request.generation.get("max_tokens", pipeline.generation.max_tokens)
                parsing.grammar(dict(request.schema), max_tokens)
            chat = context.chat(pipeline, job.model)
            prompt, generation = prompt_and_generation(request, pipeline.generation, chat)
            strip = request.endpoint == CHAT
            engine = context.engine_for(pipeline, job.model)
            answer = generate(
                engine,
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
    if batch.status == "failed":  # failed at validating (a retry of the same file)
        raise InputError("batch file failed validation; see its .batch.json")
    now = store.clock()
    if batch.finalizing_at is None and batch.cancelling_at is None:
        store.update_batch(batch.id, status="finalizing", finalizing_at=now)
    children = store.children(job.id)
    outputs, errors = result_lines(batch.id, children)
    # The owner recorded when the lines were queued: the file may be gone or replaced now.
    owner = decode_meta(batch.errors_json).owner
    files = batch_files(context.settings, pipeline.name, batch.input_name, batch.id, owner)
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
    final.update(final_state(batch, children, now))
    store.update_batch(batch.id, (), **final)
    text = write_status(context, pipeline.name, batch.id, still_leased, owner)
    prompt_tokens = sum(c.prompt_tokens or 0 for c in children)
    completion_tokens = sum(c.completion_tokens or 0 for c in children)
    return JobResult(text, prompt_tokens, completion_tokens, files.output)


def final_state(batch: Batch, children: list[Job], now: datetime) -> dict[str, Any]:
    """The closing status, times and summed usage of a batch whose lines are all final."""
    meta = decode_meta(batch.errors_json).but(usage=summed_usage(children))
    expired = any(
        error_of(child)[0] == "batch_expired"
        for child in children
        if child.status != JobStatus.SUCCEEDED
    )
    if batch.cancelling_at is not None:
        state: dict[str, Any] = {"status": "cancelled", "cancelled_at": batch.cancelled_at or now}
    elif expired:
        meta = meta.but(expired_at=meta.expired_at or int(now.timestamp()))
        state = {"status": "expired"}
    else:
        state = {"status": "completed", "completed_at": batch.completed_at or now}
    return {**state, "errors_json": meta.encode()}


def live_object(context: JobContext, batch_id: str) -> dict[str, object] | None:
    """The batch object with request counts as they are now."""
    batch = context.store.get_batch(batch_id)
    if batch is None:
        return None
    counts = request_counts(batch.request_total, context.store.child_counts(batch.job_id))
    return batch_object(batch, counts)


def write_status(
    context: JobContext,
    pipeline: str,
    batch_id: str,
    still_leased: StillLeased = lambda: True,
    owner: int | None = None,
) -> str:
    """Write `<name>.<batch id>.batch.json` as the batch is now (in the input's `owner`'s
    folder with outputs_per_submitter); returns its text.

    A final status is never replaced by one that is not: a writer that read the batch
    before another slot's gather finished it (`expand` once its lines are queued) keeps
    the final file. Every write here is guarded (`write_atomic`'s `keep`), final ones
    too, so no status lands between another's check and its rename."""
    value = live_object(context, batch_id)
    assert value is not None
    text = json.dumps(value, indent=2) + "\n"
    final = value["status"] in FINAL_BATCH
    files = batch_files(context.settings, pipeline, str(value["input_file_id"]), batch_id, owner)
    written = publish(
        still_leased,
        files.batch,
        text,
        context.settings.output_mode,
        keep=lambda existing: not final and holds_final_status(existing),
    )
    if not written:
        event("batch.status_kept", batch_id=batch_id, stale=value["status"])
    return text
