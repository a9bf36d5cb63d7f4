"""File naming rules: which inbox entries are ignored, where outputs and originals go."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

# Suffixes of files that are still being written by common tools.
PARTIAL_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".swp", "~")
# `<name>.meta.json` beside an OpenAI Batch file holds its completion window and metadata
# (worker.batch.fidelity); it is read with the batch, never run as an input of its own.
SIDECAR_SUFFIX = ".meta.json"
NAME_MAX_BYTES = 255
OUTPUT_EXTENSIONS = {"text": ".txt", "markdown": ".md", "json": ".json", "jsonl": ".jsonl"}


def is_ignored_name(name: str) -> bool:
    """Dot-files, partial downloads and batch sidecars are never read as inputs."""
    lower = name.lower()
    return (
        name.startswith(".") or lower.endswith(PARTIAL_SUFFIXES) or lower.endswith(SIDECAR_SUFFIX)
    )


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


# A shortened name keeps at least this many bytes of its head beside `~<8 hex>`; a suffix
# that leaves less room is shortened with the name (it came from the input, not from us).
_MIN_HEAD_BYTES = 16


def fit_name(name: str, suffix: str = "") -> str:
    """`name + suffix` within NAME_MAX (255) bytes: a long `name` is cut (keeping valid
    UTF-8) and marked with `~` and 8 hex of the sha256 of the whole, so two long names
    that differ anywhere stay different. A `suffix` too long to keep is cut with it."""
    whole = (name + suffix).encode()
    if len(whole) <= NAME_MAX_BYTES:
        return name + suffix
    digest = hashlib.sha256(whole).hexdigest()[:8]
    budget = NAME_MAX_BYTES - len(suffix.encode()) - 9
    if budget < _MIN_HEAD_BYTES:
        name, suffix, budget = name + suffix, "", NAME_MAX_BYTES - 9
    head = name.encode()[:budget].decode("utf-8", errors="ignore")
    return f"{head}~{digest}{suffix}"


def fits(name: str) -> bool:
    """Whether `name` is within NAME_MAX bytes."""
    return len(os.fsencode(name)) <= NAME_MAX_BYTES


def output_name(input_name: str, output_format: str) -> str:
    """The outbox name for an input: `report.txt` gives `report.txt.md` for markdown output.

    Keeping the whole input name makes the output path unique per input name.
    """
    return fit_name(input_name, OUTPUT_EXTENSIONS[output_format])


def error_name(archived_name: str) -> str:
    """The reason file beside a failed original."""
    return fit_name(archived_name, ".error.json")


def archive_name(input_name: str, job_id: int, taken: bool) -> str:
    """The name under done/ or failed/: the input's own, or with the job id if that is taken."""
    if not taken:
        return input_name
    path = Path(input_name)
    return fit_name(f"{path.stem}.job{job_id}", path.suffix)


def free_archive_name(input_name: str, job_id: int, taken: Callable[[str], bool]) -> str:
    """The name under done/ or failed/ for a job's original: the input's own, else with
    the job id (and a counter), the first for which neither the name nor its
    `.error.json` is `taken`. An original and an error file never overwrite each other:
    `report.txt.error.json` (an input) and the reason file of `report.txt` are different
    files, whichever came first."""
    candidates = [input_name]
    path = Path(input_name)
    candidates.append(fit_name(f"{path.stem}.job{job_id}", path.suffix))
    candidates.extend(fit_name(f"{path.stem}.job{job_id}.{n}", path.suffix) for n in range(1, 100))
    for name in candidates:
        if not taken(name) and not taken(error_name(name)):
            return name
    raise FileExistsError(f"no free name under which to archive {input_name!r}")
