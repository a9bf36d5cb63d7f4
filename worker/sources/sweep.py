"""Sweeps: the files matching a pipeline's globs that are new or changed become jobs.

Swept files are read where they are and never moved. Each job's idempotency key is
derived from pipeline, path and content hash, so a file is enqueued once per
content: unchanged files never again, a changed file once more. What was queued is
remembered in the database (`swept_files`): an unchanged file (same size and mtime) is
skipped without being read, after a restart and after its job was purged too.

The globs are walked without following links (`worker.sources.walk`), within
`sweep_max_entries` entries and `sweep_max_seconds` per fire; one file's problem (a
name that is not UTF-8, a read error) is logged and skipped, never the whole fire.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worker.config import Settings
from worker.errors import InputError
from worker.io.files import content_digest
from worker.io.instance import instance_id
from worker.io.naming import is_ignored_name, name_problem, printable_path
from worker.io.safe_read import read_beneath
from worker.logs import event
from worker.queue.jobs import JobStore, NewJob
from worker.queue.models import JobKind
from worker.queue.sweeps import Seen, SweepMemory
from worker.sources.walk import (
    Budget,
    Found,
    absolute_pattern,
    glob_pattern,
    split_root,
    walk_glob,
)

__all__ = [
    "Sweeper",
    "absolute_pattern",
    "glob_pattern",
    "matching_files",
    "sweep_key",
    "swept_root",
]

KEY_MAX = 500  # jobs.idempotency_key is VARCHAR(500)


def sweep_key(pipeline: str, path: str, digest: str) -> str:
    """Idempotency key of one content of one swept file (a very long path is hashed)."""
    key = f"sweep:{pipeline}:{path}:{digest}"
    if len(key) <= KEY_MAX:
        return key
    return f"sweep:{pipeline}:path-sha256={hashlib.sha256(path.encode()).hexdigest()}:{digest}"


def swept_root(path: str, patterns: Sequence[str], data_dir: Path) -> Path | None:
    """The literal root of the first glob `path` matches (what a read of it must stay
    below, following no link), or None if it matches none of them."""
    for pattern in patterns:
        full = absolute_pattern(pattern, data_dir)
        if glob_pattern(full).match(path):
            root = Path(split_root(full)[0])
            if path.startswith(f"{str(root).rstrip('/')}/"):
                return root
    return None


def output_subfolder(path: Path, root: Path) -> Path:
    """The folders of a swept file's output below `outbox/<pipeline>/`: where the file
    lies below `root`, the literal root of the first glob it matches (`swept_root`).
    `reports/**/*.txt` puts the output of `reports/2026-11/summary.txt` under `2026-11/`,
    so files of one name in different folders of a tree never share an output; a flat
    glob (`/srv/share/*.md`) gives none. Only the glob the file matches counts, so adding
    another glob to the pipeline moves no output."""
    return path.parent.relative_to(root)


def matching_files(
    patterns: Sequence[str], data_dir: Path, max_entries: int = 10**9, max_seconds: float = 1e9
) -> list[Path]:
    """The regular files matching the globs (relative globs are under data_dir), found
    without following links; links, folders, dot-files and other entries are left out."""
    budget = Budget(max_entries, max_seconds)
    found: set[Path] = set()
    for pattern in patterns:
        full = absolute_pattern(pattern, data_dir)
        found.update(
            m.path
            for m in walk_glob(full, budget)
            if not (m.link or m.other or m.path.name.startswith("."))
        )
    return sorted(found)


@dataclass
class FireReport:
    """What one sweep did: new jobs, and whether the walk was cut short."""

    job_ids: list[int] = field(default_factory=list)
    truncated: bool = False
    entries: int = 0


class Sweeper:
    """Enqueues the new or changed files of a pipeline's sweep."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.memory = SweepMemory(store.db, clock=store.clock)
        # Paths already warned about (a link, a bad name), per pipeline; pruned each fire
        # to what that fire still found, so the set never outgrows the folder.
        self._warned: dict[str, set[str]] = {}

    def sweep(self, pipeline: str, patterns: Sequence[str]) -> list[int]:
        """Enqueue every matching file whose content has no job yet; returns the new job ids.

        Files written to within the settle time are left for the next fire.
        """
        return self.sweep_report(pipeline, patterns).job_ids

    def sweep_report(self, pipeline: str, patterns: Sequence[str]) -> FireReport:
        """`sweep`, saying also whether the walk ran out of its budget."""
        settings = self.settings
        budget = Budget(settings.sweep_max_entries, settings.sweep_max_seconds)
        report = FireReport()
        seen = self.memory.load(pipeline)
        found: set[str] = set()
        warned = self._warned.setdefault(pipeline, set())
        still_warned: set[str] = set()
        for pattern in patterns:
            full = absolute_pattern(pattern, settings.data_dir)
            for match in walk_glob(full, budget):
                path = str(match.path)
                if path in found:
                    continue
                found.add(path)
                problem = self._problem(match)
                if problem is not None:
                    still_warned.add(path)
                    if path not in warned:
                        event(
                            "sweep.ignored",
                            logging.WARNING,
                            path=printable_path(Path(path)),
                            reason=problem,
                        )
                    continue
                try:
                    job_id = self._consider(pipeline, match, seen)
                except InputError as exc:
                    still_warned.add(path)
                    if path not in warned:
                        event("sweep.unreadable", logging.WARNING, path=path, error=str(exc))
                    continue
                if job_id is not None:
                    report.job_ids.append(job_id)
            if budget.truncated:
                break
        self._warned[pipeline] = still_warned
        report.truncated, report.entries = budget.truncated, budget.entries
        if budget.truncated:
            event(
                "sweep.truncated",
                logging.WARNING,
                pipeline=pipeline,
                entries=budget.entries,
                seconds=round(time.monotonic() - budget.started, 1),
                hint="raise sweep_max_entries / sweep_max_seconds, or narrow the glob",
            )
        elif not budget.incomplete and found:
            # A complete walk that found something: forget files that are gone. A walk
            # that could not open a folder, or found nothing at all (a share not
            # mounted: an empty mount point), forgets nothing, or every file would run
            # again once it is back.
            gone = [path for path in seen if path not in found]
            if gone:
                self.memory.forget(pipeline, gone)
        return report

    def _problem(self, match: Found) -> str | None:
        """Why a match is skipped (logged once), or None; ignored names are silent."""
        name = match.relative.rsplit("/", 1)[-1]
        if is_ignored_name(name):
            return None if not match.link else "symlink"
        if match.link:
            return "symlink"
        if match.other:
            return "not a regular file"
        return name_problem(str(match.path))

    def _consider(self, pipeline: str, match: Found, seen: dict[str, Seen]) -> int | None:
        """Queue one regular file if its content is new; the new job's id, or None."""
        name = match.relative.rsplit("/", 1)[-1]
        if is_ignored_name(name):
            return None
        path = str(match.path)
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if time.time_ns() - info.st_mtime_ns < self.settings.settle_seconds * 1e9:
            return None  # still being written: the next fire takes it
        known = seen.get(path)
        if known is not None and (known.size, known.mtime_ns) == (info.st_size, info.st_mtime_ns):
            return None  # unchanged since it was queued: not even read
        digest = self._digest(match, info.st_size)
        if digest is None:
            return None
        job_id = None
        if known is None or known.digest != digest:
            job_id = self._enqueue(pipeline, path, digest)
        fresh = Seen(info.st_size, info.st_mtime_ns, digest)
        self.memory.remember(pipeline, [(path, fresh)])
        seen[path] = fresh
        return job_id

    def _digest(self, match: Found, size: int) -> str | None:
        """sha256 of the content (`oversize`: too large to read); None if it is gone or
        cannot be read now (logged; the next fire tries again)."""
        if size > self.settings.max_input_bytes:
            return "oversize"  # not read: the runner fails it with the size limit
        try:
            data = read_beneath(match.root, match.relative, self.settings.max_input_bytes)
        except FileNotFoundError:
            return None
        except OSError as exc:
            event("sweep.unreadable", logging.WARNING, path=str(match.path), error=str(exc))
            return None
        return content_digest(data)

    def _enqueue(self, pipeline: str, path: str, digest: str) -> int | None:
        job_id = self.store.enqueue(
            NewJob(
                pipeline=pipeline,
                source=JobKind.SWEEP,
                source_path=path,
                idempotency_key=sweep_key(pipeline, path, digest),
                origin=instance_id(self.settings.data_dir),  # only this folder's daemons
            )
        )
        if job_id is not None:
            event("job.enqueued", job_id=job_id, pipeline=pipeline, file=path)
        return job_id
