"""Reading an OpenAI Batch input file: one request per line, each checked on its own.

A bad line (not JSON, no or duplicate custom_id, unsupported method or url, unknown
model, invalid body) becomes an error for that line only; the valid lines still run.
The costly checks (`check_lines`: JSON, bodies, JSON Schemas and their grammars) run in
the parsing sandbox; resolving models and duplicate ids (`finish_lines`) in the daemon.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.batch.request import LineError, parse_line
from worker.errors import InputError
from worker.io import jsontext
from worker.io.decode import decode_text
from worker.io.readers import too_many_records

MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class BatchLine:
    """One non-blank line: the request to run, or the error that stops it."""

    line: int
    custom_id: str | None
    request: dict[str, Any] | None = None  # {"custom_id", "method", "url", "body"}
    error: LineError | None = None


def _custom_id(value: Any) -> str | None:
    if isinstance(value.get("custom_id"), str) and value["custom_id"]:
        return str(value["custom_id"])
    return None


def _check(value: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise LineError("invalid_request", "the line must be a JSON object")
    custom_id = _custom_id(value)
    if custom_id is None:
        raise LineError("invalid_request", "custom_id must be a non-empty string", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise LineError(
            "invalid_request", f"custom_id is over {MAX_CUSTOM_ID} characters", "custom_id"
        )
    method = value.get("method")
    if method != "POST":
        raise LineError(
            "invalid_method", f"method {method!r} is not supported (use POST)", "method"
        )
    parse_line(str(value.get("url")), value.get("body"))
    return custom_id, {
        "custom_id": custom_id,
        "method": method,
        "url": value["url"],
        "body": value["body"],
    }


def check_lines(data: bytes, max_lines: int | None = None) -> list[BatchLine]:
    """Every non-blank line of a batch file, in order, each checked on its own (JSON, fields,
    body, JSON Schema): the costly part, run in the parsing sandbox. Models and duplicate
    custom_ids are left to `finish_lines`. InputError if there are more than `max_lines`
    request lines (nothing is checked then) or none."""
    lines: list[BatchLine] = []
    for number, text in enumerate(decode_text(data).splitlines(), start=1):
        if not text.strip():
            continue
        if max_lines is not None and len(lines) >= max_lines:
            raise too_many_records(max_lines)
        try:
            value = jsontext.loads(text)
        except json.JSONDecodeError as exc:
            error = LineError("invalid_json", f"line {number} is not valid JSON: {exc.msg}")
            lines.append(BatchLine(number, None, error=error))
            continue
        except jsontext.JSONTooDeep as exc:
            lines.append(
                BatchLine(number, None, error=LineError("invalid_json", f"line {number}: {exc}"))
            )
            continue
        custom_id = _custom_id(value) if isinstance(value, dict) else None
        try:
            checked_id, request = _check(value)
        except LineError as bad:
            lines.append(BatchLine(number, custom_id, error=bad))
            continue
        lines.append(BatchLine(number, checked_id, request=request))
    if not lines:
        raise InputError("empty input: the batch file has no request lines")
    return lines


def finish_lines(lines: list[BatchLine], resolve_model: Callable[[str], str]) -> list[BatchLine]:
    """Checked lines with each request's model resolved (`resolve_model` raises LookupError)
    and a custom_id used twice refused on its second line: cheap, in the daemon."""
    finished: list[BatchLine] = []
    seen: set[str] = set()
    for line in lines:
        if line.request is None or line.custom_id is None:
            finished.append(line)
            continue
        try:
            resolve_model(str(line.request["body"]["model"]))
        except LookupError as exc:
            message = str(exc.args[0]) if exc.args else "unknown model"
            error = LineError("model_not_found", message, "model")
            finished.append(BatchLine(line.line, line.custom_id, error=error))
            continue
        if line.custom_id in seen:
            duplicate = LineError(
                "duplicate_custom_id",
                f"custom_id {line.custom_id!r} was already used by an earlier line",
                "custom_id",
            )
            finished.append(BatchLine(line.line, line.custom_id, error=duplicate))
            continue
        seen.add(line.custom_id)
        finished.append(line)
    return finished


def read_batch(
    data: bytes, resolve_model: Callable[[str], str], max_lines: int | None = None
) -> list[BatchLine]:
    """Every non-blank line of a batch file, in order (`check_lines`, then `finish_lines`)
    in this process: for tests; the daemon and the CLI run `check_lines` in the sandbox."""
    return finish_lines(check_lines(data, max_lines), resolve_model)
