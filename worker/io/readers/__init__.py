"""Input readers, chosen by file extension (or by the pipeline's `reader`).

A reader turns the bytes of one input into either one Document (a job) or Records
(one job per line or row, gathered back into one output file in input order).
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

from worker.config import Settings
from worker.io.readers.base import (
    NO_LIMITS,
    Document,
    ReadLimits,
    Record,
    Records,
    template_variables,
    text_over_limit,
    too_many_records,
)
from worker.io.readers.html import read_html
from worker.io.readers.pdf import read_pdf
from worker.io.readers.records import read_csv, read_json, read_jsonl
from worker.io.readers.text import read_text

ReaderName = Literal["auto", "text", "html", "pdf", "json", "jsonl", "csv", "openai-batch"]

BY_EXTENSION: dict[str, ReaderName] = {
    ".txt": "text",
    ".md": "text",
    ".markdown": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
}


def reader_for(name: str, configured: ReaderName = "auto") -> ReaderName:
    """The reader for a file name: the pipeline's choice, else by extension, else text."""
    if configured != "auto":
        return configured
    return BY_EXTENSION.get(PurePath(name).suffix.lower(), "text")


def read_input(
    data: bytes, reader: ReaderName, limits: ReadLimits = NO_LIMITS
) -> Document | Records:
    """Read one input with `reader` (not "openai-batch": see worker.batch). InputError if
    bad, or if it becomes more text or more records than `limits` allow."""
    result: Document | Records
    if reader == "html":
        result = read_html(data)
    elif reader == "pdf":
        result = read_pdf(data, limits.max_text_chars)
    elif reader == "json":
        result = read_json(data, limits)
    elif reader == "jsonl":
        result = read_jsonl(data, limits)
    elif reader == "csv":
        result = read_csv(data, limits)
    else:
        result = read_text(data)
    limit = limits.max_text_chars
    if isinstance(result, Document) and limit is not None and len(result.text) > limit:
        raise text_over_limit(limit)
    return result


def limits_of(settings: Settings) -> ReadLimits:
    """The read limits `settings` set: text up to max_input_bytes characters, records up
    to max_records_per_file."""
    return ReadLimits(settings.max_input_bytes, settings.max_records_per_file)


__all__ = [
    "BY_EXTENSION",
    "NO_LIMITS",
    "Document",
    "ReadLimits",
    "ReaderName",
    "Record",
    "Records",
    "limits_of",
    "read_input",
    "reader_for",
    "template_variables",
    "text_over_limit",
    "too_many_records",
]
