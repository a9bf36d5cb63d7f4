"""Formats with one job per line or row: JSON Lines, CSV, and a JSON array."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from worker.errors import InputError
from worker.io.decode import decode_text
from worker.io.readers.base import Document, Record, Records, template_variables


def _fields(value: Any) -> dict[str, Any]:
    # A bare value (string, number) is the input itself.
    return value if isinstance(value, dict) else {"input": value}


def _no_records(kind: str) -> InputError:
    return InputError(f"empty input: the {kind} has no records")


def read_jsonl(data: bytes) -> Records:
    """One record per non-blank line; a line that is not JSON is a record with an error."""
    records = []
    for number, line in enumerate(decode_text(data).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record(number, _fields(json.loads(line))))
        except json.JSONDecodeError as exc:
            records.append(Record(number, None, f"line {number} is not valid JSON: {exc.msg}"))
    if not records:
        raise _no_records("JSON Lines file")
    return Records(records)


def read_json(data: bytes) -> Document | Records:
    """An array: one record per element. An object: one job, its fields as variables."""
    text = decode_text(data)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if isinstance(value, list):
        if not value:
            raise _no_records("JSON array")
        return Records([Record(i, _fields(item)) for i, item in enumerate(value, start=1)])
    input_text, variables = template_variables(_fields(value))
    return Document(input_text, variables)


def read_csv(data: bytes) -> Records:
    """The first row is the header; every later row is a record of header -> value."""
    reader = csv.reader(io.StringIO(decode_text(data), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise _no_records("CSV file") from None
    except csv.Error as exc:
        raise InputError(f"not valid CSV: {exc}") from None
    header = [name.strip() for name in header]
    if not any(header):
        raise InputError("the CSV header row is empty")
    records = []
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            records.append(Record(start, None, f"line {start}: not valid CSV: {exc}"))
            break
        if any(cell.strip() for cell in row):
            if len(row) != len(header):
                error = f"line {start} has {len(row)} fields; the header has {len(header)}"
                records.append(Record(start, None, error))
            else:
                records.append(Record(start, dict(zip(header, row, strict=True))))
        start = reader.line_num + 1
    if not records:
        raise _no_records("CSV file")
    return Records(records)
