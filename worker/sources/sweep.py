"""Sweeps: the files matching a pipeline's globs that are new or changed become jobs.

Swept files are read where they are and never moved. Each job's idempotency key is
derived from pipeline, path and content hash, so a file is enqueued once per
content: unchanged files never again, a changed file once more.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from worker.config import Settings
from worker.errors import InputError
from worker.io.files import content_digest
from worker.io.instance import instance_id
from worker.io.naming import is_ignored_name
from worker.io.safe_read import read_regular_file
from worker.logs import event
from worker.queue.jobs import JobStore, NewJob
from worker.queue.models import JobKind

KEY_MAX = 500  # jobs.idempotency_key is VARCHAR(500)


def sweep_key(pipeline: str, path: str, digest: str) -> str:
    """Idempotency key of one content of one swept file (a very long path is hashed)."""
    key = f"sweep:{pipeline}:{path}:{digest}"
    if len(key) <= KEY_MAX:
        return key
    return f"sweep:{pipeline}:path-sha256={hashlib.sha256(path.encode()).hexdigest()}:{digest}"


def glob_pattern(pattern: str) -> re.Pattern[str]:
    """A regex that matches a path exactly when `glob.glob(pattern, recursive=True)` would
    find it: `*` and `?` stay within one folder, `**/` spans any number of folders."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
            continue
        char = pattern[i]
        closing = pattern.find("]", i + 2) if char == "[" else -1
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif closing > 0:
            members = pattern[i + 1 : closing]
            negate = members.startswith("!")
            body = re.escape(members[1:] if negate else members).replace("\\-", "-")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = closing + 1
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def absolute_pattern(pattern: str, data_dir: Path) -> str:
    """A sweep glob as an absolute pattern (relative globs are under data_dir)."""
    return pattern if os.path.isabs(pattern) else str(data_dir.resolve() / pattern)


def matching_files(patterns: Sequence[str], data_dir: Path) -> list[Path]:
    """Absolute paths matching the globs (`**` recurses; relative globs are under data_dir)."""
    found: set[Path] = set()
    for pattern in patterns:
        full = absolute_pattern(pattern, data_dir)
        found.update(Path(os.path.abspath(match)) for match in glob.glob(full, recursive=True))
    return sorted(found)


class Sweeper:
    """Enqueues the new or changed files of a pipeline's sweep."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self._warned: set[Path] = set()
        # (size, mtime_ns) of files whose current content is known to have a job: they
        # are skipped without being read again, so a frequent sweep of a big tree is cheap.
        self._known: dict[tuple[str, Path], tuple[int, int]] = {}

    def sweep(self, pipeline: str, patterns: Sequence[str]) -> list[int]:
        """Enqueue every matching file whose content has no job yet; returns the new job ids.

        Files written to within the settle time are left for the next fire.
        """
        job_ids: list[int] = []
        for path in matching_files(patterns, self.settings.data_dir):
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if is_ignored_name(path.name) or not stat.S_ISREG(info.st_mode):
                if stat.S_ISLNK(info.st_mode) and path not in self._warned:
                    self._warned.add(path)  # a directory match is expected, a link is not
                    event("sweep.ignored", logging.WARNING, path=str(path), reason="symlink")
                continue
            if time.time_ns() - info.st_mtime_ns < self.settings.settle_seconds * 1e9:
                continue
            signature = (info.st_size, info.st_mtime_ns)
            if self._known.get((pipeline, path)) == signature:
                continue
            digest = self._digest(path, info.st_size)
            if digest is None:
                continue
            job_id = self._enqueue(pipeline, path, digest)
            self._known[(pipeline, path)] = signature
            if job_id is not None:
                job_ids.append(job_id)
        return job_ids

    def _digest(self, path: Path, size: int) -> str | None:
        """sha256 of the content (`oversize`: too large to read); None if unreadable."""
        if size > self.settings.max_input_bytes:
            return "oversize"  # not read: the runner fails it with the size limit
        try:
            return content_digest(read_regular_file(path, self.settings.max_input_bytes))
        except FileNotFoundError:
            return None
        except (OSError, InputError) as exc:
            event("sweep.unreadable", logging.WARNING, path=str(path), error=str(exc))
            return None

    def _enqueue(self, pipeline: str, path: Path, digest: str) -> int | None:
        job_id = self.store.enqueue(
            NewJob(
                pipeline=pipeline,
                source=JobKind.SWEEP,
                source_path=str(path),
                idempotency_key=sweep_key(pipeline, str(path), digest),
                origin=instance_id(self.settings.data_dir),  # only this folder's daemons
            )
        )
        if job_id is not None:
            event("job.enqueued", job_id=job_id, pipeline=pipeline, file=str(path))
        return job_id
