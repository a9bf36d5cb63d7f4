"""Durable pauses of a pipeline's intake: one small file `<data_dir>/paused/<pipeline>`.

While a pipeline is paused the dispatcher claims none of its jobs (they wait, queued)
and the inbox watcher leaves its new files in the inbox; both pick up again within a
poll or a rescan of the resume. The flag is a file so that it survives restarts and
needs no schema change; it is per data folder (per host): with several daemons on one
PostgreSQL table, pause the pipeline on each host that serves it.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from worker.io.atomic import fsync_dir, write_atomic
from worker.pipelines.spec import PIPELINE_NAME


class Pauses:
    """The set of paused pipelines, read from its folder (cached on the folder's mtime)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seen: tuple[int, frozenset[str]] | None = None

    def paused(self) -> frozenset[str]:
        """Names of the paused pipelines (one `stat` when nothing changed)."""
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return frozenset()
        seen = self._seen
        if seen is not None and seen[0] == mtime:
            return seen[1]
        names = frozenset(
            entry.name
            for entry in os.scandir(self.folder)
            if re.fullmatch(PIPELINE_NAME, entry.name) and entry.is_file(follow_symlinks=False)
        )
        self._seen = (mtime, names)
        return names

    def is_paused(self, pipeline: str) -> bool:
        return pipeline in self.paused()

    def pause(self, pipeline: str, who: str) -> bool:
        """Pause `pipeline`'s intake; False if it already was. ValueError for a bad name."""
        _check(pipeline)
        if self.is_paused(pipeline):
            return False
        self.folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        note = {"paused_at": datetime.now(UTC).isoformat(), "by": who}
        write_atomic(self.folder / pipeline, (json.dumps(note) + "\n").encode())
        self._seen = None
        return True

    def resume(self, pipeline: str) -> bool:
        """Resume `pipeline`'s intake; False if it was not paused."""
        _check(pipeline)
        try:
            (self.folder / pipeline).unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self.folder)
        self._seen = None
        return True


def _check(pipeline: str) -> None:
    if not re.fullmatch(PIPELINE_NAME, pipeline):
        raise ValueError(f"not a pipeline name: {pipeline!r}")
