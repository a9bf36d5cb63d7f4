"""OpenAI Batch files as OpenAI writes them: where each kind of error goes, the completion
window, the sidecar `<name>.meta.json`, and the batch object's extra fields.

- A request that fails the way an HTTP call fails (bad request, context too long,
  unknown model, a server error) goes to the error file with `error: null` and
  `response: {status_code, request_id, body: {error: {message, type, param, code}}}`.
- The top-level `error` is only for `batch_expired`, `batch_cancelled` and timeouts.
- A file whose lines break the file format (not JSON, no or a duplicate `custom_id`,
  a method or a url that is not supported) fails at `validating` with
  `errors.data[].line` set; none of its lines runs.
- Unlike OpenAI's, a file may mix urls (chat, completions, embeddings): that is not a
  format error; each line runs on its own, and the batch's `endpoint` is its first
  valid line's url.
- The completion window (default 24 h) and `metadata` come from an optional sidecar
  `<name>.meta.json` beside the input; lines still waiting when it passes end as
  `batch_expired` and the batch as `expired`.

The batch's extra fields (window, metadata, model, usage, expired_at) live in the
`errors_json` column as one JSON object (the legacy content, a bare list of errors,
still reads), so no schema change was needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from worker.batch.request import LineError

DEFAULT_WINDOW = "24h"
MAX_SIDECAR_BYTES = 64 * 1024
MAX_METADATA_KEYS = 16
TOP_LEVEL = frozenset({"batch_expired", "batch_cancelled", "request_timeout"})
# Codes that make the whole file invalid (OpenAI checks these while `validating`).
FILE_CODES = frozenset({"invalid_json", "duplicate_custom_id", "invalid_method", "invalid_url"})
STATUS_OF = {"model_not_found": 404, "server_error": 500, "request_timeout": 408}
_PARAM = re.compile(r"^(.*) \(param: ([^()]{1,200})\)$", re.DOTALL)
_CODED = re.compile(r"^([a-z_]+): (.*)$", re.DOTALL)
_WINDOW = re.compile(r"^([1-9][0-9]{0,6})(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
TIMEOUT_PREFIX = "job ran past job_timeout"


class SidecarError(ValueError):
    """The `<name>.meta.json` beside a batch file is not usable."""


def is_file_error(error: LineError) -> bool:
    """Whether this line's error fails the whole file at `validating`."""
    if error.code in FILE_CODES:
        return True
    # No custom_id, or a line that is not an object or has no body object.
    return error.code == "invalid_request" and error.param in (None, "custom_id", "body")


def line_error_text(error: LineError) -> str:
    """A failed line's `jobs.error`: `code: message (param: name)`, read back by
    `parse_error`."""
    text = f"{error.code}: {error.message}"
    return f"{text} (param: {error.param})" if error.param else text


def parse_error(text: str | None) -> tuple[str, str, str | None]:
    """(code, message, param) of a line's error text; unknown text is a server error."""
    text = text or "unknown error"
    if text.startswith(TIMEOUT_PREFIX):
        return "request_timeout", text, None
    match = _CODED.match(text)
    if not match:
        return "server_error", text, None
    code, message = match.group(1), match.group(2)
    param = None
    with_param = _PARAM.match(message)
    if with_param:
        message, param = with_param.group(1), with_param.group(2)
    return code, message, param


def error_line(line: dict[str, Any], code: str, message: str, param: str | None, req: str) -> None:
    """Fill `line` (with its id and custom_id) as an error-file line, OpenAI's way."""
    if code in TOP_LEVEL:
        line["response"] = None
        line["error"] = {"code": code, "message": message}
        return
    status = STATUS_OF.get(code, 400)
    kind = "server_error" if status >= 500 else "invalid_request_error"
    line["response"] = {
        "status_code": status,
        "request_id": req,
        "body": {"error": {"message": message, "type": kind, "param": param, "code": code}},
    }
    line["error"] = None


def window_seconds(text: str) -> int:
    """`24h`, `90m`, `3600s`, `2d` in seconds; ValueError otherwise."""
    match = _WINDOW.match(text.strip())
    if not match:
        raise ValueError(f"completion_window {text!r} must be like 24h, 90m or 3600s")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class BatchMeta:
    """What the batch record keeps beyond its columns (stored in `errors_json`)."""

    errors: list[dict[str, Any]] = field(default_factory=list)
    completion_window: str = DEFAULT_WINDOW
    metadata: dict[str, str] | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None
    expired_at: int | None = None
    # The input file's owner when its lines were queued: where the result files go with
    # outputs_per_submitter, whatever happens to the file later. Never shown.
    owner: int | None = None

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=window_seconds(self.completion_window))

    def expires_at(self, created_at: datetime) -> datetime:
        return created_at + self.window

    def encode(self) -> str:
        return json.dumps(
            {
                "errors": self.errors,
                "completion_window": self.completion_window,
                "metadata": self.metadata,
                "model": self.model,
                "usage": self.usage,
                "expired_at": self.expired_at,
                "owner": self.owner,
            }
        )

    def but(self, **changes: Any) -> BatchMeta:
        values = {**self.__dict__, **changes}
        return BatchMeta(**values)


def decode_meta(text: str | None) -> BatchMeta:
    """The batch's meta from `errors_json` (a bare list: errors only, as before)."""
    if not text:
        return BatchMeta()
    value = json.loads(text)
    if isinstance(value, list):
        return BatchMeta(errors=value)
    return BatchMeta(
        errors=list(value.get("errors") or []),
        completion_window=str(value.get("completion_window") or DEFAULT_WINDOW),
        metadata=value.get("metadata"),
        model=value.get("model"),
        usage=value.get("usage"),
        expired_at=value.get("expired_at"),
        owner=value["owner"] if isinstance(value.get("owner"), int) else None,
    )


def parse_sidecar(data: bytes) -> tuple[str, dict[str, str] | None]:
    """(completion_window, metadata) from a `<name>.meta.json`. SidecarError if bad."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise SidecarError(f"over {MAX_SIDECAR_BYTES} bytes")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SidecarError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SidecarError("must be a JSON object")
    unknown = set(value) - {"completion_window", "metadata"}
    if unknown:
        raise SidecarError(f"unknown field(s): {', '.join(sorted(unknown))}")
    window = value.get("completion_window", DEFAULT_WINDOW)
    if not isinstance(window, str):
        raise SidecarError("completion_window must be a string such as 24h")
    try:
        window_seconds(window)
    except ValueError as exc:
        raise SidecarError(str(exc)) from None
    metadata = value.get("metadata")
    if metadata is not None:
        ok = (
            isinstance(metadata, dict)
            and len(metadata) <= MAX_METADATA_KEYS
            and all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items()
            )
        )
        if not ok:
            raise SidecarError(
                "metadata must map at most 16 keys (64 characters) to strings (512 characters)"
            )
    return window, metadata


def summed_usage(children: Sequence[Any]) -> dict[str, Any]:
    """OpenAI's batch `usage`: the tokens of every line that ran, summed."""
    prompt = sum(int(getattr(c, "prompt_tokens", None) or 0) for c in children)
    completion = sum(int(getattr(c, "completion_tokens", None) or 0) for c in children)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def validation_errors(errors: Sequence[tuple[int, LineError]]) -> list[dict[str, Any]]:
    """`errors.data` of a file that fails at `validating`: its file-level line errors.

    Unlike OpenAI's, a file may mix endpoints (chat, completions, embeddings): each line
    runs on its own model, and the batch's `endpoint` is its first valid line's url."""
    found = [
        {"code": e.code, "message": e.message, "param": e.param, "line": n}
        for n, e in errors
        if is_file_error(e)
    ]
    return sorted(found, key=lambda e: int(e["line"]))
