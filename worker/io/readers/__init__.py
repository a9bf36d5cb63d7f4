"""Input readers, chosen by file extension (or by the pipeline's `reader`).

A reader turns the bytes of one input into either one Document (a job) or Records
(one job per line or row, gathered back into one output file in input order).
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Literal

from worker.io.readers.base import Document, Record, Records, template_variables
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


def read_input(data: bytes, reader: ReaderName) -> Document | Records:
    """Read one input with `reader` (not "openai-batch": see worker.batch). InputError if bad."""
    if reader == "html":
        return read_html(data)
    if reader == "pdf":
        return read_pdf(data)
    if reader == "json":
        return read_json(data)
    if reader == "jsonl":
        return read_jsonl(data)
    if reader == "csv":
        return read_csv(data)
    return read_text(data)


__all__ = [
    "BY_EXTENSION",
    "Document",
    "ReaderName",
    "Record",
    "Records",
    "read_input",
    "reader_for",
    "template_variables",
]
