"""Embedding pipelines (their model has `kind = "embed"`): each input becomes a vector.

- a document file: `outbox/<pipeline>/<name>.embedding.json`, `{"model", "dimensions",
  "tokens", "input_sha256", "embedding"}`; the job's result is the same object with the
  settings' fingerprint.
- a records file (CSV, JSON Lines, JSON array): one child job per record, each with its
  vector as JSON in its row; gathered into `<name>.embeddings.jsonl`, one line per
  record in input order, `{"index", "id" (when the record has one), "embedding"}` (a
  record that failed has `"embedding": null` and its `"error"`). With `output_format =
  "npy"`: `<name>.embeddings.npy` (float32, one row per record that succeeded) beside
  `<name>.embeddings.ids.jsonl`, whose lines say which record each row is (`"row"`).
- a table row: the vector as JSON in `result_text`.

Re-dropping an unchanged file does not embed it again: a fresh copy is a new job (its
key holds the mtime), which finds the earlier succeeded job on the same bytes and the
same settings and writes its outputs from that job's result (`embedding.reused`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import GenerationInterrupted
from worker.io.atomic import write_atomic
from worker.io.files import FileRef, FileVersion, digest_of_key, output_folder
from worker.io.naming import fit_name
from worker.llm.embedding import Embedder
from worker.llm.model_files import resolve_model
from worker.llm.pooling import Vector, shortest_floats
from worker.logs import event
from worker.pipelines.models import pipeline_model
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob
from worker.queue.models import Job, JobStatus
from worker.run.kinds.base import (
    Attempt,
    JobContext,
    JobResult,
    ShouldStop,
    StillLeased,
    publish,
)

FILE_SUFFIX = ".embedding.json"
RECORDS_SUFFIX = ".embeddings.jsonl"
NPY_SUFFIX = ".embeddings.npy"
IDS_SUFFIX = ".embeddings.ids.jsonl"


def embed_one(
    embedder: Embedder, pipeline: Pipeline, text: str, should_stop: ShouldStop
) -> tuple[Vector, int]:
    """The vector of one input with the pipeline's prefix, pooling, normalization and
    long-input rule; and the tokens it took."""
    result = embedder.embed(
        [pipeline.input_prefix + text],
        should_stop,
        normalize=pipeline.normalize,
        pooling=pipeline.pooling,
        long_input=pipeline.long_input,
    )
    return result.vectors[0], result.tokens[0]


def vector_result(vector: Vector, tokens: int, output: Path | None = None) -> JobResult:
    """A job result holding the vector as a JSON array."""
    return JobResult(json.dumps(shortest_floats(vector)), tokens, 0, output)


def embed_text(
    context: JobContext, pipeline: Pipeline, text: str, should_stop: ShouldStop
) -> JobResult:
    """A row or a record: the vector as JSON in the job's result."""
    vector, tokens = embed_one(context.embedder_for(pipeline), pipeline, text, should_stop)
    return vector_result(vector, tokens)


def settings_fingerprint(context: JobContext, pipeline: Pipeline) -> str:
    """A digest of everything that shapes a pipeline's vectors: the model (its file too),
    pooling, normalization, prefix, long-input rule and context. Equal fingerprints and
    equal input bytes give the same vectors."""
    settings = context.settings
    name = pipeline_model(pipeline, settings)
    model = resolve_model(settings, name)
    try:
        info = model.path.stat()
        file_part: list[int] | None = [info.st_size, info.st_mtime_ns]
    except OSError:
        file_part = None
    embedder = context.embedder_for(pipeline)
    parts = {
        "model": name,
        "path": str(model.path),
        "sha256": model.sha256,
        "file": file_part,
        "pooling": pipeline.pooling or embedder.pooling,
        "normalize": embedder.normalize if pipeline.normalize is None else pipeline.normalize,
        "input_prefix": pipeline.input_prefix,
        "long_input": pipeline.long_input,
        "n_ctx": embedder.n_ctx,
        "dimensions": embedder.dimensions,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def earlier_result(
    context: JobContext, attempt: Attempt, ref: FileRef, fingerprint: str
) -> tuple[int, dict[str, Any]] | None:
    """(job id, result) of an earlier succeeded job on the same bytes of the same inbox
    file with the same settings: a re-dropped file is not embedded again.

    An inbox file's key holds its mtime (a fresh copy is a new job), so the earlier job
    is found by the sha256 in its key.
    """
    version = FileVersion.from_key(attempt.job.idempotency_key)
    if version is None or version.digest == "oversize":
        return None
    found = context.store.succeeded_version(attempt.pipeline.name, ref.source_path, version.digest)
    if found is None or found.id == attempt.job.id or not found.result_text:
        return None
    try:
        result = json.loads(found.result_text)
    except json.JSONDecodeError:  # a generation result of the same pipeline name
        return None
    if not isinstance(result, dict) or result.get("settings") != fingerprint:
        return None
    return found.id, result


def run_document(
    context: JobContext, attempt: Attempt, ref: FileRef, text: str, output: Path
) -> JobResult:
    """An inbox document: reuse the vector of an earlier drop of the same bytes, or embed."""
    pipeline = attempt.pipeline
    fingerprint = settings_fingerprint(context, pipeline)
    earlier = earlier_result(context, attempt, ref, fingerprint)
    if earlier is not None and isinstance(earlier[1].get("embedding"), list):
        job_id, result = earlier
        event("embedding.reused", job_id=attempt.job.id, from_job=job_id, file=ref.name)
        document = {k: v for k, v in result.items() if k != "settings"}
        mode = context.settings.output_mode
        publish(attempt.still_leased, output, json.dumps(document) + "\n", mode)
        return JobResult(json.dumps(result), 0, 0, output)
    digest = digest_of_key(attempt.job.idempotency_key)
    return embed_file(
        context,
        pipeline,
        text,
        output,
        attempt.should_stop,
        attempt.still_leased,
        {"input_sha256": digest, "settings": fingerprint},
    )


def embed_file(
    context: JobContext,
    pipeline: Pipeline,
    text: str,
    output: Path,
    should_stop: ShouldStop,
    still_leased: StillLeased,
    extra: Mapping[str, Any] | None = None,
) -> JobResult:
    """A document: its vector in `output` (`<name>.embedding.json`); the job's result is
    the same object, with `extra` (the settings fingerprint) beside it."""
    embedder = context.embedder_for(pipeline)
    vector, tokens = embed_one(embedder, pipeline, text, should_stop)
    extra = dict(extra or {})
    document: dict[str, Any] = {
        "model": pipeline_model(pipeline, context.settings),
        "dimensions": int(vector.shape[0]),
        "tokens": tokens,
    }
    if extra.get("input_sha256"):
        document["input_sha256"] = extra["input_sha256"]
    document["embedding"] = shortest_floats(vector)
    publish(still_leased, output, json.dumps(document) + "\n", context.settings.output_mode)
    result = {**document, **{k: v for k, v in extra.items() if k == "settings"}}
    return JobResult(json.dumps(result), tokens, 0, output)


def file_output(
    context: JobContext, pipeline: Pipeline, input_name: str, owner: int | None
) -> Path:
    """`outbox/<pipeline>/<input name>.embedding.json` (in `outbox/<pipeline>/<uid>/` of the
    input's `owner` with outputs_per_submitter, like every other output)."""
    folder = output_folder(context.settings, pipeline.name, owner)
    return folder / fit_name(input_name, FILE_SUFFIX)


def record_id(fields: Mapping[str, Any] | None) -> Any:
    """The record's own id (an `id` field that is a string or a number), or None."""
    if not fields:
        return None
    value = fields.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int | float) or value == "":
        return None
    return value


def _publish_bytes(still_leased: StillLeased, path: Path, data: bytes, mode: int) -> None:
    def confirm() -> None:
        if not still_leased():
            raise GenerationInterrupted("lease lost before publishing")

    write_atomic(path, data, before_replace=confirm, mode=mode)


def npy_bytes(vectors: list[Vector], dimensions: int) -> bytes:
    """A .npy file (format 1.0, little-endian float32) of one row per vector."""
    matrix = np.stack(vectors).astype("<f4") if vectors else np.zeros((0, dimensions), dtype="<f4")
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, matrix, allow_pickle=False)
    return buffer.getvalue()


def _line(index: int, child: Job) -> tuple[dict[str, Any], Vector | None]:
    fields = json.loads(child.input_text or "{}").get("fields")
    line: dict[str, Any] = {"index": index}
    found = record_id(fields)
    if found is not None:
        line["id"] = found
    if child.status == JobStatus.SUCCEEDED and child.result_text:
        vector = np.asarray(json.loads(child.result_text), dtype=np.float32)
        return line, vector
    line["error"] = child.error or f"the record ended {child.status}"
    return line, None


def reuse_records(
    context: JobContext, attempt: Attempt, ref: FileRef, owner: int
) -> JobResult | None:
    """A records file whose same bytes were embedded before with the same settings: its
    outputs written again from that job's records (into `owner`'s folder: the uid owning
    the file just read), nothing embedded. None otherwise."""
    fingerprint = settings_fingerprint(context, attempt.pipeline)
    earlier = earlier_result(context, attempt, ref, fingerprint)
    if earlier is None or "records" not in earlier[1]:
        return None
    job_id = earlier[0]
    event("embedding.reused", job_id=attempt.job.id, from_job=job_id, file=ref.name)
    return gather(context, attempt.job, attempt.pipeline, ref, attempt.still_leased, owner, job_id)


def gather(
    context: JobContext,
    job: ClaimedJob,
    pipeline: Pipeline,
    ref: FileRef,
    still_leased: StillLeased,
    owner: int | None,
    records_of: int | None = None,
) -> JobResult:
    """Every record's vector, in input order, into `<name>.embeddings.jsonl` (or `.npy`
    and its ids file), in the input `owner`'s folder with outputs_per_submitter.
    `records_of`: the job whose records to write (default: this one's)."""
    settings = context.settings
    folder = output_folder(settings, pipeline.name, owner)
    mode = settings.output_mode
    texts: list[str] = []
    vectors: list[Vector] = []
    tokens = 0
    children = context.store.children(job.id if records_of is None else records_of)
    for index, child in enumerate(children):
        line, vector = _line(index, child)
        tokens += 0 if records_of is not None else child.prompt_tokens or 0
        if pipeline.output_format == "npy":
            line["row"] = len(vectors) if vector is not None else None
        else:
            line["embedding"] = shortest_floats(vector) if vector is not None else None
        if vector is not None:
            vectors.append(vector)
        texts.append(json.dumps(line, ensure_ascii=False))
    body = "".join(f"{text}\n" for text in texts)
    if pipeline.output_format == "npy":
        dimensions = vectors[0].shape[0] if vectors else context.embedder_for(pipeline).dimensions
        array = folder / fit_name(ref.name, NPY_SUFFIX)
        _publish_bytes(still_leased, array, npy_bytes(vectors, dimensions), mode)
        output = folder / fit_name(ref.name, IDS_SUFFIX)
    else:
        output = folder / fit_name(ref.name, RECORDS_SUFFIX)
    publish(still_leased, output, body, mode)
    summary = {
        "records": len(children),
        "embedded": len(vectors),
        "failed": len(children) - len(vectors),
        "settings": settings_fingerprint(context, pipeline),
    }
    return JobResult(json.dumps(summary), tokens, 0, output)
