"""The file side of file jobs: keys, input and output paths, archiving the original.

Two sources are files: `file` (the watch folder; `source_path` is `<pipeline>/<name>`
under the inbox, and the original is archived afterwards) and `sweep` (a schedule's
globs; `source_path` is the absolute path, read in place and never moved).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from worker.config import Settings
from worker.errors import InputError
from worker.io.atomic import fsync_dir, move_durably, rename_noreplace, write_atomic
from worker.io.naming import error_name, free_archive_name, output_name
from worker.io.safe_read import read_regular_file

# The runner (after an outcome) and the watcher (finishing a move a crash interrupted) may
# archive the same original at the same moment; one at a time, the second finds it gone.
_ARCHIVE_LOCK = threading.Lock()


@dataclass(frozen=True)
class FileRef:
    """A file job's input: `<inbox>/<pipeline>/<name>`."""

    pipeline: str
    name: str

    @classmethod
    def parse(cls, source_path: str, pipeline: str) -> FileRef:
        """The reference a row's `source_path` names, checked as untrusted input: a file
        directly inside `inbox/<pipeline>/` of the row's own pipeline. InputError if not."""
        folder, sep, name = source_path.partition("/")
        problem = None
        if not sep or folder != pipeline:
            problem = f"it must start with the job's pipeline folder {pipeline!r}/"
        elif not name or name in (".", "..") or "/" in name:
            problem = "it must name one file directly inside the pipeline's inbox"
        elif "\x00" in source_path:
            problem = "it contains a NUL character"
        if problem is not None:
            raise InputError(f"invalid source_path {source_path!r}: {problem}")
        return cls(pipeline, name)

    @property
    def source_path(self) -> str:
        return f"{self.pipeline}/{self.name}"

    def inbox_path(self, settings: Settings) -> Path:
        return settings.folder("inbox", self.pipeline) / self.name

    def output_path(self, settings: Settings, output_format: str, owner: int | None = None) -> Path:
        """Where this input's output goes (in `owner`'s folder with outputs_per_submitter)."""
        folder = output_folder(settings, self.pipeline, owner)
        return folder / output_name(self.name, output_format)

    def owner(self, settings: Settings) -> int | None:
        """The uid owning the input in the inbox (None if it is gone). With the inbox's
        sticky bit, only its owner (or the daemon) can replace it."""
        return file_owner(self.inbox_path(settings))


def file_owner(path: Path) -> int | None:
    """The uid owning `path` itself (a link is not followed); None if it is gone."""
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def output_folder(settings: Settings, pipeline: str, owner: int | None) -> Path:
    """`outbox/<pipeline>/`, or with outputs_per_submitter `outbox/<pipeline>/<uid>/` of the
    input's owner, so two submitters' inputs of the same name never share an output."""
    folder = settings.folder("outbox", pipeline)
    if settings.outputs_per_submitter and owner is not None:
        return folder / str(owner)
    return folder


@dataclass(frozen=True)
class FileVersion:
    """One version of an input file, as its job's idempotency key records it."""

    size: int
    mtime_ns: int
    digest: str  # sha256 of the bytes, or "oversize" (not read: over max_input_bytes)

    @classmethod
    def from_key(cls, key: str | None) -> FileVersion | None:
        """The version in a `file:` key; None for other keys."""
        if not key or not key.startswith("file:"):
            return None
        parts = key.rsplit(":", 3)
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].lstrip("-").isdigit():
            return None
        return cls(int(parts[1]), int(parts[2]), parts[3])

    def matches(self, info: os.stat_result) -> bool:
        """Whether a file's lstat result could be this version (size and mtime)."""
        return info.st_size == self.size and info.st_mtime_ns == self.mtime_ns


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_of_key(key: str | None) -> str | None:
    """The content digest a file or sweep job was queued with (`oversize`: not read)."""
    return key.rsplit(":", 1)[1] if key and key.startswith(("file:", "sweep:")) else None


def file_key(ref: FileRef, size: int, mtime_ns: int, digest: str) -> str:
    """Idempotency key of one version of an inbox file.

    The same bytes at the same mtime are the same request; a rewrite or a fresh copy
    of the file is a new one.
    """
    return f"file:{ref.source_path}:{size}:{mtime_ns}:{digest}"


def archive_original(
    settings: Settings,
    ref: FileRef,
    job_id: int,
    succeeded: bool,
    error: str | None = None,
    when: datetime | None = None,
    version: FileVersion | None = None,
) -> Path | None:
    """Move the original out of the inbox into done/ or failed/ (beside `<name>.error.json`).

    With `version`, only that version of the file moves: a file rewritten in the inbox
    while its previous version ran is a new job, and stays. Returns the new path, or
    None if the original (that version) is no longer in the inbox.
    """
    with _ARCHIVE_LOCK:
        source = ref.inbox_path(settings)
        identity = None
        if version is not None:
            identity = _version_identity(source, version, settings.max_input_bytes)
            if identity is None:
                return None
        return _archive(settings, ref, job_id, succeeded, error, when, identity, version)


def _version_identity(path: Path, version: FileVersion, max_bytes: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at `path` if it is `version`, else None. The file is
    stat'ed again after its bytes are hashed: a file replaced meanwhile is not it."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or not version.matches(info):
        return None
    if version.digest != "oversize":
        try:
            if content_digest(read_regular_file(path, max_bytes)) != version.digest:
                return None
            again = os.lstat(path)
        except (OSError, InputError):
            return None
        if (again.st_dev, again.st_ino) != (info.st_dev, info.st_ino) or not version.matches(again):
            return None
    return info.st_dev, info.st_ino


def _put_back(moved: Path, source: Path, job_id: int) -> None:
    """Return a file that `_archive` moved by mistake (a newer version that took the
    original's name just before the move) to the inbox, where it is a job of its own.
    If yet another file holds the name by now, this one comes back under a free name.
    A crash between the move and this leaves the newer file in done/ or failed/: the
    window is the few system calls between the two renames."""
    for _ in range(5):
        name = source.name
        if os.path.lexists(source):
            name = free_archive_name(
                source.name, job_id, lambda n: os.path.lexists(source.parent / n)
            )
        try:
            rename_noreplace(moved, source.with_name(name))
            break
        except FileExistsError:  # taken meanwhile: pick again
            continue
    else:  # pragma: no cover - names taken five times over: leave it where it is
        raise FileExistsError(f"no free name in {source.parent} to put {moved.name} back")
    fsync_dir(source.parent)
    fsync_dir(moved.parent)


def _archive(
    settings: Settings,
    ref: FileRef,
    job_id: int,
    succeeded: bool,
    error: str | None,
    when: datetime | None,
    identity: tuple[int, int] | None = None,
    version: FileVersion | None = None,
) -> Path | None:
    source = ref.inbox_path(settings)
    if not source.is_file() or source.is_symlink():
        return None
    folder = settings.folder("done" if succeeded else "failed", ref.pipeline)
    name = free_archive_name(ref.name, job_id, lambda n: os.path.lexists(folder / n))
    if not succeeded:
        reason = {
            "job_id": job_id,
            "pipeline": ref.pipeline,
            "input": ref.name,
            "error": error or "unknown error",
            "failed_at": when.isoformat() if when else None,
        }
        payload = json.dumps(reason, indent=2, ensure_ascii=False) + "\n"
        write_atomic(folder / error_name(name), payload.encode(), mode=settings.output_mode)
    target = folder / name
    try:
        move_durably(source, target, mode=settings.output_mode)
    except FileNotFoundError:  # another process moved it first
        if not source.exists():
            return None
        raise
    if identity is not None and version is not None:
        # The rename takes whatever file holds the name at that instant. A newer version
        # written (or renamed) into the inbox since the check is not this job's original:
        # it goes back, to run as its own job, and this job's version is gone already.
        info = os.lstat(target)
        if (info.st_dev, info.st_ino) != identity or not version.matches(info):
            _put_back(target, source, job_id)
            if not succeeded:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / error_name(name))
            return None
    return target


def make_inbox(folder: Path, mode: int) -> None:
    """Create an inbox folder with `mode` (whatever the umask); an existing one is left
    as its administrator set it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        return
    os.chmod(folder, mode)
