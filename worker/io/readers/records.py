"""Formats with one job per line or row: JSON Lines, CSV, and a JSON array.

A bad line or row (not JSON, nested too deep, a stray quote, the wrong number of
fields) is a record with its error; the others still run. A file with more records
than allowed fails as a whole, before any of them becomes a job.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from worker.errors import InputError
from worker.io import jsontext
from worker.io.decode import decode_text
from worker.io.readers.base import (
    NO_LIMITS,
    Document,
    ReadLimits,
    Record,
    Records,
    template_variables,
    too_many_records,
)


def _fields(value: Any) -> dict[str, Any]:
    # A bare value (string, number) is the input itself.
    return value if isinstance(value, dict) else {"input": value}


def _no_records(kind: str) -> InputError:
    return InputError(f"empty input: the {kind} has no records")


def _check_count(count: int, limits: ReadLimits) -> None:
    if limits.max_records is not None and count > limits.max_records:
        raise too_many_records(limits.max_records)


def read_jsonl(data: bytes, limits: ReadLimits = NO_LIMITS) -> Records:
    """One record per non-blank line; a line that is not JSON is a record with an error."""
    records: list[Record] = []
    for number, line in enumerate(decode_text(data).splitlines(), start=1):
        if not line.strip():
            continue
        _check_count(len(records) + 1, limits)
        try:
            records.append(Record(number, _fields(jsontext.loads(line))))
        except json.JSONDecodeError as exc:
            records.append(Record(number, None, f"line {number} is not valid JSON: {exc.msg}"))
        except jsontext.JSONTooDeep as exc:
            records.append(Record(number, None, f"line {number}: {exc}"))
    if not records:
        raise _no_records("JSON Lines file")
    return Records(records)


def read_json(data: bytes, limits: ReadLimits = NO_LIMITS) -> Document | Records:
    """An array: one record per element. An object: one job, its fields as variables."""
    text = decode_text(data)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise jsontext.JSONTooDeep(jsontext.MAX_JSON_DEPTH) from None
    if isinstance(value, list):
        if not value:
            raise _no_records("JSON array")
        _check_count(len(value), limits)
        return Records([_element(i, item) for i, item in enumerate(value, start=1)])
    if jsontext.nesting_depth_over(value, jsontext.MAX_JSON_DEPTH):
        raise jsontext.JSONTooDeep(jsontext.MAX_JSON_DEPTH)
    input_text, variables = template_variables(_fields(value))
    return Document(input_text, variables)


def _element(index: int, item: Any) -> Record:
    # The array itself is one level: an element may nest one level less.
    if jsontext.nesting_depth_over(item, jsontext.MAX_JSON_DEPTH - 1):
        return Record(
            index, None, f"element {index}: {jsontext.JSONTooDeep(jsontext.MAX_JSON_DEPTH)}"
        )
    return Record(index, _fields(item))


class _Lines:
    """The physical lines of a CSV text, read by csv.reader, restartable at any line."""

    def __init__(self, text: str) -> None:
        # newline="" splits at \n, \r and \r\n and keeps them, as the csv module expects.
        self.lines = list(io.StringIO(text, newline=""))
        self.next = 0  # index of the next line to hand out

    def __iter__(self) -> Iterator[str]:
        while self.next < len(self.lines):
            self.next += 1
            yield self.lines[self.next - 1]


def read_csv(data: bytes, limits: ReadLimits = NO_LIMITS) -> Records:
    """The first row is the header; every later row is a record of header -> value.

    Parsing is strict: a stray quote makes its row a record with an error, and reading
    starts again on the line after that row's first, so it cannot swallow the rows
    after it.
    """
    lines = _Lines(decode_text(data))
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise _no_records("CSV file") from None
    except csv.Error as exc:
        raise InputError(f"not valid CSV: {exc}") from None
    header = [name.strip() for name in header]
    if not any(header):
        raise InputError("the CSV header row is empty")
    records: list[Record] = []
    while True:
        start = lines.next + 1  # 1-based line number of the row about to be read
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                # Not a stray quote: reading on after the row's first line would make
                # each line of the long field a record of its own.
                raise InputError(
                    f"line {start}: a CSV field is longer than {csv.field_size_limit()} characters"
                ) from None
            _check_count(len(records) + 1, limits)
            records.append(Record(start, None, f"line {start}: not valid CSV: {exc}"))
            lines.next = start  # go on with the line after this row's first
            reader = csv.reader(lines, strict=True)
            continue
        if not any(cell.strip() for cell in row):
            continue
        _check_count(len(records) + 1, limits)
        if len(row) != len(header):
            error = f"line {start} has {len(row)} fields; the header has {len(header)}"
            records.append(Record(start, None, error))
        else:
            records.append(Record(start, dict(zip(header, row, strict=True))))
    if not records:
        raise _no_records("CSV file")
    return Records(records)
