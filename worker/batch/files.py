"""The result files of an OpenAI Batch, built only from database rows.

Everything here is a function of the rows, ids included, so gathering again after a
crash writes the same files: each line is in exactly one of them, exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from worker.batch.fidelity import decode_meta, error_line, parse_error
from worker.batch.request import stable_id
from worker.config import Settings
from worker.errors import InputError
from worker.io.files import output_folder
from worker.io.naming import fit_name
from worker.io.safe_read import read_regular_file
from worker.queue.models import Batch, Job, JobStatus

BATCH_SUFFIXES = (".output.jsonl", ".errors.jsonl", ".batch.json")
# The statuses a batch never leaves.
FINAL_BATCH = frozenset({"completed", "failed", "expired", "cancelled"})
# The most of a `.batch.json` read back (its errors.data has a line per bad line).
MAX_STATUS_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class BatchFiles:
    output: Path
    errors: Path
    batch: Path


def batch_files(
    settings: Settings, pipeline: str, input_name: str, batch_id: str, owner: int | None = None
) -> BatchFiles:
    """`outbox/<pipeline>/<input name>.<batch id>.output.jsonl`, `.errors.jsonl` and
    `.batch.json` (in `outbox/<pipeline>/<uid>/` of the input's `owner` with
    outputs_per_submitter, like every other output).

    The whole input name and the batch id: `c.json` and `c.jsonl` never share result
    files, and a name used again never overwrites an earlier batch's. A long input name
    is shortened (the same way for all three) so that every name fits 255 bytes.
    """
    tail = f".{batch_id}"
    longest = max(BATCH_SUFFIXES, key=lambda suffix: len(suffix.encode()))
    head = fit_name(input_name, tail + longest).removesuffix(tail + longest)
    folder = output_folder(settings, pipeline, owner)
    output, errors, batch = (folder / f"{head}{tail}{suffix}" for suffix in BATCH_SUFFIXES)
    return BatchFiles(output, errors, batch)


def holds_final_status(path: Path) -> bool:
    """Whether the `.batch.json` at `path` says the batch is final (completed, failed,
    expired, cancelled). Read as untrusted (the owner's folder): anything but a regular
    file of at most MAX_STATUS_BYTES holding a JSON object is not final. A read the
    machine failed (TransientReadError: EIO, EMFILE...) raises: unsure is not "not final",
    and the write that asked must not replace the file on a guess."""
    try:
        value = json.loads(read_regular_file(path, MAX_STATUS_BYTES))
    except (FileNotFoundError, InputError, ValueError):  # gone, not ours, not JSON
        return False
    return isinstance(value, dict) and value.get("status") in FINAL_BATCH


def error_of(child: Job) -> tuple[str, str, str | None]:
    """(code, message, param) of a child that did not succeed."""
    code, message, param = parse_error(child.error)
    if child.status == JobStatus.CANCELLED and code != "batch_expired":
        return "batch_cancelled", "the batch was cancelled before this request finished", None
    return code, message, param


def _custom_id(child: Job) -> str | None:
    try:
        value = json.loads(child.input_text or "{}").get("custom_id")
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def result_lines(batch_id: str, children: Sequence[Job]) -> tuple[list[str], list[str]]:
    """The output and error lines (JSON text) for final children, in input order."""
    outputs: list[str] = []
    errors: list[str] = []
    for child in children:
        line: dict[str, Any] = {
            "id": stable_id("batch_req_", batch_id, child.item_index),
            "custom_id": _custom_id(child),
        }
        if child.status == JobStatus.SUCCEEDED and child.result_text:
            line["response"] = {
                "status_code": 200,
                "request_id": stable_id("req_", batch_id, child.item_index),
                "body": json.loads(child.result_text),
            }
            line["error"] = None
            outputs.append(json.dumps(line, ensure_ascii=False))
        else:
            code, message, param = error_of(child)
            error_line(line, code, message, param, stable_id("req_", batch_id, child.item_index))
            errors.append(json.dumps(line, ensure_ascii=False))
    return outputs, errors


def request_counts(total: int, statuses: dict[str, int]) -> dict[str, int]:
    """OpenAI's request_counts from child counts by status."""
    failed = sum(
        statuses.get(s, 0) for s in (JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED)
    )
    return {"total": total, "completed": statuses.get(JobStatus.SUCCEEDED, 0), "failed": failed}


def _epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def batch_object(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    """The batch shaped like OpenAI's Batch object (`openai.types.Batch`)."""
    meta = decode_meta(batch.errors_json)
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": meta.model,
        "errors": {"object": "list", "data": meta.errors} if meta.errors else None,
        "input_file_id": batch.input_name,
        "completion_window": meta.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file,
        "error_file_id": batch.error_file,
        "created_at": _epoch(batch.created_at),
        "in_progress_at": _epoch(batch.in_progress_at),
        "expires_at": _epoch(meta.expires_at(batch.created_at)),
        "finalizing_at": _epoch(batch.finalizing_at),
        "completed_at": _epoch(batch.completed_at),
        "failed_at": _epoch(batch.failed_at),
        "expired_at": meta.expired_at,
        "cancelling_at": _epoch(batch.cancelling_at),
        "cancelled_at": _epoch(batch.cancelled_at),
        "request_counts": counts,
        "usage": meta.usage,
        "metadata": meta.metadata,
    }


def jsonl(lines: Sequence[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode("utf-8")
