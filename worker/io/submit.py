"""Client-side helpers: putting files into an inbox and waiting for their jobs."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.config import Settings
from worker.io.atomic import fsync_dir, move_durably, temp_name
from worker.io.files import FileRef, content_digest, file_key, make_inbox
from worker.queue.jobs import JobStore
from worker.queue.models import FINAL_STATUSES, Job, JobKind

# How long `wait_keys` waits, once every job is final, for their originals to be named.
ARCHIVE_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class SubmittedFile:
    ref: FileRef
    key: str


def _free_name(folder: Path, name: str) -> str:
    if not (folder / name).exists():
        return name
    stem, suffix = os.path.splitext(name)
    return f"{stem}.{secrets.token_hex(3)}{suffix}"


def copy_into_inbox(settings: Settings, pipeline: str, source: Path) -> SubmittedFile:
    """Copy `source` into `inbox/<pipeline>/` atomically (a hidden temp file, then a rename)."""
    folder = settings.folder("inbox", pipeline)
    make_inbox(folder, settings.inbox_mode)
    data = source.read_bytes()
    name = _free_name(folder, source.name)
    tmp = folder / temp_name(name)  # hidden, and within 255 bytes for any name
    with open(tmp, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / name)
    fsync_dir(folder)
    info = (folder / name).stat()
    ref = FileRef(pipeline, name)
    return SubmittedFile(ref, file_key(ref, info.st_size, info.st_mtime_ns, content_digest(data)))


def wait_keys(
    store: JobStore,
    files: Sequence[SubmittedFile],
    timeout: float,
    on_progress: Callable[[int], None] = lambda _n: None,
    poll: float = 0.5,
) -> dict[str, Job]:
    """Poll until every file's job is final (or `timeout`); returns the jobs found, by key.

    The daemon records a job's outcome, then moves its original to done/ or failed/ and
    names it in `archived_path`: once all are final, this waits a little longer
    (ARCHIVE_GRACE_SECONDS) for those names, so that a `jobs retry` run right after finds
    the original to move back. A move that failed (the watcher finishes it later) does
    not hold the wait beyond that grace.
    """
    deadline = time.monotonic() + timeout
    found: dict[str, Job] = {}
    all_final_at: float | None = None
    while True:
        for item in files:
            job = store.get_by_key(item.key)
            # Only the file job of this very input: a row that merely carries the key (the
            # database refuses such keys on other rows, migration 0006) is not its result.
            if job is not None and job.source_path == item.ref.source_path:
                found[item.key] = job
        final = [job for job in found.values() if job.status in FINAL_STATUSES]
        on_progress(len(final))
        now = time.monotonic()
        if len(final) == len(files):
            all_final_at = now if all_final_at is None else all_final_at
            archived = all(job.archived_path for job in final)
            if archived or now - all_final_at >= ARCHIVE_GRACE_SECONDS:
                return found
        if now >= deadline:
            return found
        time.sleep(poll)


def restore_original(settings: Settings, job: Job, store: JobStore) -> Path | None:
    """Put a failed file job's original back into its inbox as a new version.

    The row forgets its `archived_path` first (guarded by the path it names), then the file
    moves: a crash in between leaves a file no row names (kept by retention), never a row
    naming the path that the new version's original may take later. Returns the inbox
    path, or None if the job is not a file job with an archived original.
    """
    if job.source != JobKind.FILE or not job.source_path or not job.archived_path:
        return None
    ref = FileRef.parse(job.source_path, job.pipeline)
    archived = Path(job.archived_path)
    # Rows are untrusted: only a regular file directly in done/ or failed/ of the job's
    # own pipeline is moved back, never a path the row merely names.
    homes = {settings.folder(kind, ref.pipeline).resolve() for kind in ("done", "failed")}
    if archived.parent.resolve() not in homes or archived.is_symlink() or not archived.is_file():
        return None
    if not store.clear_archived_path(job.id, job.archived_path):
        return None  # changed meanwhile (another retry): leave it
    folder = settings.folder("inbox", ref.pipeline)
    target = folder / _free_name(folder, ref.name)
    try:
        # A fresh mtime makes it a new version, so it gets a new job. Set before the move:
        # the watcher must never see it in the inbox with the old version's mtime (it
        # would take it for the failed job's leftover and move it straight back).
        os.utime(archived)
        move_durably(archived, target)
    except BaseException:
        store.set_archived_path(job.id, job.archived_path)  # still there: the row keeps it
        raise
    return target
