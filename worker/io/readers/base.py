"""What readers produce: one document, or records that each become a job."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.errors import InputError

# Record fields used as the input text, in this order, when present.
INPUT_FIELDS = ("input", "text")


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on what one input may become: the characters of its text (a small PDF can
    hold megabytes of text) and its number of records (each becomes a job)."""

    max_text_chars: int | None = None
    max_records: int | None = None


NO_LIMITS = ReadLimits()


def text_over_limit(limit: int) -> InputError:
    """The error for text that expanded past `max_input_bytes`."""
    return InputError(
        f"extracted text is over max_input_bytes: more than {limit} characters; split the document"
    )


def too_many_records(limit: int) -> InputError:
    """The error for a file with more records than `max_records_per_file`."""
    return InputError(f"the file has more than {limit} records (max_records_per_file); split it")


@dataclass(frozen=True)
class Document:
    """One input text, and template variables where the format has fields (a JSON object)."""

    text: str
    variables: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """One line or row. `line` is 1-based in the file; `error` set if it cannot be read."""

    line: int
    fields: Mapping[str, Any] | None
    error: str | None = None


@dataclass(frozen=True)
class Records:
    """Lines or rows in input order (bad ones included, with their error)."""

    records: list[Record]


def template_variables(fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The `{{ input }}` text of a record and its other template variables.

    `input` is the `input` or `text` field if present, else every field as `name: value`
    lines. Each field is also a variable of its own (when its name is an identifier),
    and all of them are `record`.
    """
    text = next((fields[k] for k in INPUT_FIELDS if fields.get(k) not in (None, "")), None)
    if text is None:
        text = "\n".join(f"{k}: {_as_text(v)}" for k, v in fields.items())
    variables: dict[str, Any] = {
        k: v for k, v in fields.items() if k.isidentifier() and k not in ("input", "record")
    }
    variables["record"] = dict(fields)
    return _as_text(text), variables


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
