"""Embedding pipelines (their model has `kind = "embed"`): each input becomes a vector.

- a document file: `outbox/<pipeline>/<name>.embedding.json`, `{"model", "dimensions",
  "tokens", "embedding"}`; the job's result is the vector as JSON.
- a records file (CSV, JSON Lines, JSON array): one child job per record, each with its
  vector as JSON in its row; gathered into `<name>.embeddings.jsonl`, one line per
  record in input order, `{"index", "id" (when the record has one), "embedding"}` (a
  record that failed has `"embedding": null` and its `"error"`). With `output_format =
  "npy"`: `<name>.embeddings.npy` (float32, one row per record that succeeded) beside
  `<name>.embeddings.ids.jsonl`, whose lines say which record each row is (`"row"`).
- a table row: the vector as JSON in `result_text`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import GenerationInterrupted
from worker.io.atomic import write_atomic
from worker.io.files import FileRef
from worker.io.naming import fit_name
from worker.llm.embedding import Embedder
from worker.llm.pooling import Vector, shortest_floats
from worker.pipelines.models import pipeline_model
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob
from worker.queue.models import Job, JobStatus
from worker.run.kinds.base import JobContext, JobResult, ShouldStop, StillLeased, publish

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


def embed_file(
    context: JobContext,
    pipeline: Pipeline,
    text: str,
    output: Path,
    should_stop: ShouldStop,
    still_leased: StillLeased,
) -> JobResult:
    """A document: its vector in `output` (`<name>.embedding.json`) and in the result."""
    embedder = context.embedder_for(pipeline)
    vector, tokens = embed_one(embedder, pipeline, text, should_stop)
    document = {
        "model": pipeline_model(context.settings, pipeline),
        "dimensions": int(vector.shape[0]),
        "tokens": tokens,
        "embedding": shortest_floats(vector),
    }
    publish(still_leased, output, json.dumps(document) + "\n", context.settings.output_mode)
    return vector_result(vector, tokens, output)


def file_output(context: JobContext, pipeline: Pipeline, input_name: str) -> Path:
    """`outbox/<pipeline>/<input name>.embedding.json`."""
    return context.settings.folder("outbox", pipeline.name) / fit_name(input_name, FILE_SUFFIX)


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


def gather(
    context: JobContext,
    job: ClaimedJob,
    pipeline: Pipeline,
    ref: FileRef,
    still_leased: StillLeased,
) -> JobResult:
    """Every record's vector, in input order, into `<name>.embeddings.jsonl` (or `.npy`
    and its ids file)."""
    settings = context.settings
    folder = settings.folder("outbox", pipeline.name)
    mode = settings.output_mode
    texts: list[str] = []
    vectors: list[Vector] = []
    tokens = 0
    children = context.store.children(job.id)
    for index, child in enumerate(children):
        line, vector = _line(index, child)
        tokens += child.prompt_tokens or 0
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
    failed = len(children) - len(vectors)
    summary = f"{len(children)} records: {len(vectors)} embedded, {failed} failed"
    return JobResult(summary, tokens, 0, output)
