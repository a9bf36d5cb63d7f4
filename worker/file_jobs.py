"""The file side of file jobs: keys, input and output paths, archiving the original.

Two sources are files: `file` (the watch folder; `source_path` is `<pipeline>/<name>`
under the inbox, and the original is archived afterwards) and `sweep` (a schedule's
globs; `source_path` is the absolute path, read in place and never moved).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from worker.config import Settings
from worker.naming import archive_name, error_name, output_name
from worker.sinks import move_durably, write_atomic

# The runner (after an outcome) and the watcher (finishing a move a crash interrupted) may
# archive the same original at the same moment; one at a time, the second finds it gone.
_ARCHIVE_LOCK = threading.Lock()


@dataclass(frozen=True)
class FileRef:
    """A file job's input: `<inbox>/<pipeline>/<name>`."""

    pipeline: str
    name: str

    @classmethod
    def parse(cls, source_path: str) -> FileRef:
        pipeline, _, name = source_path.partition("/")
        return cls(pipeline, name)

    @property
    def source_path(self) -> str:
        return f"{self.pipeline}/{self.name}"

    def inbox_path(self, settings: Settings) -> Path:
        return settings.folder("inbox", self.pipeline) / self.name

    def output_path(self, settings: Settings, output_format: str) -> Path:
        return settings.folder("outbox", self.pipeline) / output_name(self.name, output_format)


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_key(ref: FileRef, size: int, mtime_ns: int, digest: str) -> str:
    """Idempotency key of one version of an inbox file.

    The same bytes at the same mtime are the same request; a rewrite or a fresh copy
    of the file is a new one.
    """
    return f"file:{ref.source_path}:{size}:{mtime_ns}:{digest}"


def digest_of_key(key: str | None) -> str | None:
    """The content digest a file or sweep job was queued with (`oversize`: not read)."""
    return key.rsplit(":", 1)[1] if key and key.startswith(("file:", "sweep:")) else None


FILE_SOURCES = ("file", "sweep")


def input_location(settings: Settings, source: str, source_path: str) -> Path:
    """Where a file job's input is: in the inbox, or (sweep) where it was found."""
    if source == "sweep":
        return Path(source_path)
    return FileRef.parse(source_path).inbox_path(settings)


def output_location(
    settings: Settings, pipeline: str, source: str, source_path: str, output_format: str
) -> Path:
    """`outbox/<pipeline>/<output name>` for a file or sweep job."""
    if source == "sweep":
        name = output_name(Path(source_path).name, output_format)
        return settings.folder("outbox", pipeline) / name
    return FileRef.parse(source_path).output_path(settings, output_format)


def archive_original(
    settings: Settings,
    ref: FileRef,
    job_id: int,
    succeeded: bool,
    error: str | None = None,
    when: datetime | None = None,
) -> Path | None:
    """Move the original out of the inbox into done/ or failed/ (beside `<name>.error.json`).

    Returns the new path, or None if the original is no longer in the inbox.
    """
    with _ARCHIVE_LOCK:
        return _archive(settings, ref, job_id, succeeded, error, when)


def _archive(
    settings: Settings,
    ref: FileRef,
    job_id: int,
    succeeded: bool,
    error: str | None,
    when: datetime | None,
) -> Path | None:
    source = ref.inbox_path(settings)
    if not source.is_file() or source.is_symlink():
        return None
    folder = settings.folder("done" if succeeded else "failed", ref.pipeline)
    name = archive_name(ref.name, job_id, taken=(folder / ref.name).exists())
    if not succeeded:
        reason = {
            "job_id": job_id,
            "pipeline": ref.pipeline,
            "input": ref.name,
            "error": error or "unknown error",
            "failed_at": when.isoformat() if when else None,
        }
        payload = json.dumps(reason, indent=2, ensure_ascii=False) + "\n"
        write_atomic(folder / error_name(name), payload.encode())
    target = folder / name
    try:
        move_durably(source, target)
    except FileNotFoundError:  # another process moved it first
        if not source.exists():
            return None
        raise
    return target
