"""A job's own input and output files, and nothing else of the data folder.

A row is untrusted: a path it names is shown only if it lies inside the folder that
kind of file belongs to for the row's own pipeline (directly in `inbox/`, `done/`,
`failed/` for an input; anywhere below `outbox/<pipeline>/`, through no symbolic link,
for an output), and it is read through the one safe reader (no symlink, regular files
only, bounded), then cut to a preview.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from worker.errors import InputError
from worker.io.safe_read import read_regular_file
from worker.pipelines.spec import PIPELINE_NAME
from worker.queue.snapshot_reads import JobRow

PREVIEW_BYTES = 64 * 1024
INPUT_FOLDERS = ("inbox", "done", "failed")


@dataclass(frozen=True)
class FilePreview:
    """What the job page shows of one file."""

    path: str
    text: str | None  # None: not shown (reason says why)
    reason: str | None = None
    truncated: bool = False


def _inside(data_dir: Path, path_text: str, kinds: tuple[str, ...], pipeline: str) -> Path | None:
    # The pipeline is row data too: only a real pipeline name may become a folder name
    # (an absolute "pipeline" would make `root / kind / pipeline` that absolute path).
    if re.fullmatch(PIPELINE_NAME, pipeline) is None:
        return None
    if "\x00" in path_text or not path_text:
        return None
    path = Path(os.path.abspath(path_text))
    if path.name in ("", ".", ".."):
        return None
    root = Path(os.path.abspath(data_dir))
    allowed = {root / kind / pipeline for kind in kinds}
    if path.parent in allowed:
        return path
    # Outputs may lie deeper: outbox/<pipeline>/<uid>/ (outputs_per_submitter) and the
    # folders of swept files (worker.sources.sweep.output_subfolder).
    outbox = root / "outbox" / pipeline
    if "outbox" not in kinds or outbox not in path.parents:
        return None
    between = path.parent.relative_to(outbox).parts
    if any((outbox.joinpath(*between[: i + 1])).is_symlink() for i in range(len(between))):
        return None
    return path


def input_path(data_dir: Path, job: JobRow) -> Path | None:
    """The job's own input file in the data folder, if it has one there."""
    if job.archived_path:
        return _inside(data_dir, job.archived_path, INPUT_FOLDERS, job.pipeline)
    if job.source_path and not os.path.isabs(job.source_path):  # `<pipeline>/<name>`
        folder, _, name = job.source_path.partition("/")
        if folder == job.pipeline and name and "/" not in name:
            return _inside(data_dir, str(data_dir / "inbox" / job.source_path), ("inbox",), folder)
    return None


def output_path(data_dir: Path, job: JobRow) -> Path | None:
    """The job's own output file, if it lies in `outbox/<pipeline>/`."""
    if not job.output_path:
        return None
    return _inside(data_dir, job.output_path, ("outbox",), job.pipeline)


def preview(path: Path | None, shown_as: str | None, max_bytes: int) -> FilePreview | None:
    """The first PREVIEW_BYTES of `path` as text, read by the safe reader."""
    if path is None:
        return FilePreview(shown_as, None, "outside the job's own folders") if shown_as else None
    try:
        data = read_regular_file(path, max_bytes)
    except FileNotFoundError:
        return FilePreview(str(path), None, "no longer there (moved or purged)")
    except (InputError, OSError) as exc:
        return FilePreview(str(path), None, str(exc))
    text = data[:PREVIEW_BYTES].decode("utf-8", errors="replace")
    return FilePreview(str(path), text, truncated=len(data) > PREVIEW_BYTES)
