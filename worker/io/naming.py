"""File naming rules: which inbox entries are ignored, where outputs and originals go."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Suffixes of files that are still being written by common tools.
PARTIAL_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".swp", "~")
NAME_MAX_BYTES = 255
OUTPUT_EXTENSIONS = {"text": ".txt", "markdown": ".md", "json": ".json", "jsonl": ".jsonl"}


def is_ignored_name(name: str) -> bool:
    """Dot-files and partial downloads are never read."""
    return name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES)


def name_problem(name: str) -> str | None:
    """Why an inbox file name cannot be taken as it is, or None.

    Names are stored in the job table and written into logs and error files as text, so
    they must be valid UTF-8 (Linux allows any bytes).
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8; rename the file"
    return None


def printable_path(path: Path) -> str:
    """`path` for logs, with bytes that are not UTF-8 shown as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def _fit(name: str, suffix: str) -> str:
    """`name + suffix`, shortening `name` (keeping valid UTF-8) to fit NAME_MAX bytes."""
    budget = NAME_MAX_BYTES - len(suffix.encode())
    encoded = name.encode()
    if len(encoded) <= budget:
        return name + suffix
    digest = hashlib.sha256(encoded).hexdigest()[:8]
    head = encoded[: budget - 9].decode("utf-8", errors="ignore")
    return f"{head}~{digest}{suffix}"


def output_name(input_name: str, output_format: str) -> str:
    """The outbox name for an input: `report.txt` gives `report.txt.md` for markdown output.

    Keeping the whole input name makes the output path unique per input name.
    """
    return _fit(input_name, OUTPUT_EXTENSIONS[output_format])


def error_name(archived_name: str) -> str:
    """The reason file beside a failed original."""
    return _fit(archived_name, ".error.json")


def archive_name(input_name: str, job_id: int, taken: bool) -> str:
    """The name under done/ or failed/: the input's own, or with the job id if that is taken."""
    if not taken:
        return input_name
    path = Path(input_name)
    return _fit(f"{path.stem}.job{job_id}", path.suffix)
