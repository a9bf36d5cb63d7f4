"""The sweeps' "already seen" memory in the database (table `swept_files`).

Kept in the database, not the process, so a restart does not re-read every swept file,
and apart from `jobs`, so the retention of old jobs does not make an unchanged file
run again. Each daemon sharing the database reads it at each fire it acts on (a fire is
acted on by one daemon only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from worker.queue.base import utcnow
from worker.queue.models import SeenFile
from worker.queue.outage import translate_outages

# Rows per statement: short transactions, bounded IN lists.
CHUNK = 500


@dataclass(frozen=True)
class Seen:
    """One file's content as its sweep last queued it."""

    size: int
    mtime_ns: int
    digest: str


def path_hash(path: str) -> str:
    """The key of a path in `swept_files` (paths can be longer than an index entry)."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()


@translate_outages
class SweepMemory:
    """What each pipeline's sweeps have queued, by path."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = engine
        self.clock = clock

    def load(self, pipeline: str) -> dict[str, Seen]:
        """Every remembered file of `pipeline`, by path."""
        stmt = select(SeenFile.path, SeenFile.size, SeenFile.mtime_ns, SeenFile.digest).where(
            SeenFile.pipeline == pipeline
        )
        with self.db.connect() as conn:
            return {
                row.path: Seen(row.size, row.mtime_ns, row.digest) for row in conn.execute(stmt)
            }

    def remember(self, pipeline: str, files: Iterable[tuple[str, Seen]]) -> None:
        """Record (or update) what was queued for these paths."""
        now = self.clock()
        rows = [
            {
                "pipeline": pipeline,
                "path_sha256": path_hash(path),
                "path": path,
                "size": seen.size,
                "mtime_ns": seen.mtime_ns,
                "digest": seen.digest,
                "recorded_at": now,
            }
            for path, seen in files
        ]
        dialect = postgresql if self.db.dialect.name == "postgresql" else sqlite
        for start in range(0, len(rows), CHUNK):
            stmt = dialect.insert(SeenFile)
            stmt = stmt.on_conflict_do_update(
                index_elements=["pipeline", "path_sha256"],
                set_={
                    "size": stmt.excluded.size,
                    "mtime_ns": stmt.excluded.mtime_ns,
                    "digest": stmt.excluded.digest,
                    "recorded_at": stmt.excluded.recorded_at,
                },
            )
            with self.db.begin() as conn:
                conn.execute(stmt, rows[start : start + CHUNK])

    def forget(self, pipeline: str, paths: Collection[str]) -> int:
        """Drop the memory of files that are gone; returns how many rows went."""
        hashes = sorted(path_hash(p) for p in paths)
        gone = 0
        for start in range(0, len(hashes), CHUNK):
            stmt = delete(SeenFile).where(
                SeenFile.pipeline == pipeline,
                SeenFile.path_sha256.in_(hashes[start : start + CHUNK]),
            )
            with self.db.begin() as conn:
                gone += conn.execute(stmt).rowcount
        return gone
