"""What the inbox watcher already queued: one entry per waiting file version.

A rescan compares each file's `(size, mtime_ns, inode)` with what was queued and skips
an unchanged file without reading it or asking the job table, so a rescan costs one
`lstat` per waiting file, not a read, a hash and two queries. Entries of files that are
gone are pruned by each rescan; an entry whose job became final is dropped by the
watcher's leftover check (the file then gets looked at once more: archived if its job
is done, queued if it is a new version).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Queued:
    """A file version that has a job. `inode` None: known from the job table only (after
    a restart); the first matching `lstat` fills it in."""

    size: int
    mtime_ns: int
    inode: int | None
    job_id: int | None
    key: str


class QueuedVersions:
    """Waiting file versions that already have a job, by path. Thread-safe: the watcher's
    loop and the schedule fires (scheduled inboxes) both use it."""

    def __init__(self) -> None:
        self._by_path: dict[Path, Queued] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_path)

    def __contains__(self, path: object) -> bool:
        return path in self._by_path

    def unchanged(self, path: Path, info: os.stat_result) -> bool:
        """Whether `path` is still the version that was queued (same size, mtime, inode)."""
        with self._lock:
            entry = self._by_path.get(path)
            if entry is None or (entry.size, entry.mtime_ns) != (info.st_size, info.st_mtime_ns):
                return False
            if entry.inode is None:
                entry.inode = info.st_ino  # known from the job table: adopt the file's inode
            return entry.inode == info.st_ino

    def remember(
        self, path: Path, size: int, mtime_ns: int, inode: int | None, job_id: int | None, key: str
    ) -> None:
        """Record that this version of `path` has the job `job_id` under `key`."""
        with self._lock:
            self._by_path[path] = Queued(size, mtime_ns, inode, job_id, key)

    def forget(self, path: Path) -> None:
        with self._lock:
            self._by_path.pop(path, None)

    def prune(self, present: Collection[Path]) -> int:
        """Forget every path not in `present` (gone from the inbox); returns how many."""
        with self._lock:
            gone = [path for path in self._by_path if path not in present]
            for path in gone:
                del self._by_path[path]
        return len(gone)

    def with_jobs(self) -> Iterator[tuple[Path, Queued]]:
        """The entries whose job id is known (for the leftover check)."""
        with self._lock:
            entries = list(self._by_path.items())
        for path, entry in entries:
            if entry.job_id is not None:
                yield path, entry
