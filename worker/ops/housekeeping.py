"""Retention: old final jobs, their archived originals, and idle history are deleted.

`purge` is what both `edge-worker jobs purge` and the daemon's daily `Housekeeping`
loop run. The age rules are one plain function (`cutoffs`); the SQL is in
`worker.queue.housekeeping`. Rows are untrusted: a job's `archived_path` is deleted
only when it is a regular file directly inside `done/<pipeline>/` or
`failed/<pipeline>/` of the job's own pipeline; anything else it names is left alone.
A file goes before its row, so a crash in between leaves a row pointing at nothing,
never a file that no row remembers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from worker.background import BackgroundLoop
from worker.config import Settings
from worker.errors import InputError
from worker.io.files import FileVersion
from worker.io.naming import error_name
from worker.io.safe_read import read_regular_file
from worker.logs import event
from worker.pipelines.spec import PIPELINE_NAME
from worker.queue.housekeeping import ExpiredJob, HousekeepingStore
from worker.queue.jobs import utcnow

DAY = timedelta(days=1)
# Rows that record nothing of value (a stopped daemon, a fire that found no work) go
# after a day, or after the retention period if that is shorter.
IDLE_HISTORY = DAY
HOUSEKEEPING_INTERVAL = 24 * 3600.0
FIRST_RUN_DELAY = 60.0
# An error file is a few hundred bytes; one larger than this is not ours.
ERROR_FILE_MAX_BYTES = 65_536  # after start: not during start-up, not skipped by a restart loop


@dataclass(frozen=True)
class Cutoffs:
    """What is old enough to go: rows older than these times."""

    jobs: datetime  # final jobs finished before this
    stopped_workers: datetime  # rows of daemons that stopped before this
    silent_workers: datetime  # rows of daemons silent (crashed, killed) since before this
    empty_fires: datetime  # schedule fires that enqueued nothing, recorded before this


def cutoffs(now: datetime, days: float) -> Cutoffs:
    """The cut-off times of a retention of `days` days at `now`."""
    keep = timedelta(days=days)
    idle = min(keep, IDLE_HISTORY)
    return Cutoffs(now - keep, now - idle, now - keep, now - idle)


@dataclass
class PurgeReport:
    """What a purge deleted (or, in a dry run, would delete)."""

    jobs: int = 0
    files: int = 0
    workers: int = 0
    fires: int = 0

    def describe(self, dry_run: bool) -> str:
        verb = "would delete" if dry_run else "deleted"
        return (
            f"{verb} {self.jobs} job(s), {self.files} archived file(s) in done/ and failed/, "
            f"{self.workers} daemon row(s), {self.fires} empty schedule fire(s)"
        )


def archived_files(settings: Settings, job: ExpiredJob) -> list[Path]:
    """The files of `job` in done/ or failed/ that may be deleted: its archived original
    (and in failed/, the `.error.json` beside it), checked as untrusted input and by
    identity: the original must still be the version the job ran (size and mtime_ns of
    its `file:` key; a rename keeps both), the error file must name the job. A path that
    now holds another job's file (a retried job's name taken again) is left alone."""
    if not job.archived_path or not re.fullmatch(PIPELINE_NAME, job.pipeline):
        return []
    path = Path(job.archived_path)
    if path.name in ("", ".", "..") or "\x00" in job.archived_path:
        return []
    version = FileVersion.from_key(job.idempotency_key)
    if version is None:
        return []  # no identity to check it against: kept
    try:
        parent = path.parent.resolve()
    except (OSError, RuntimeError):
        return []
    found: list[Path] = []
    for kind in ("done", "failed"):
        home = settings.folder(kind, job.pipeline)
        if parent != home.resolve():
            continue
        original = home / path.name
        if not _is_version(original, version):
            continue
        found.append(original)
        reason = home / error_name(path.name)
        if kind == "failed" and _names_job(reason, job.id):
            found.append(reason)
    return found


def _is_version(path: Path, version: FileVersion) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and version.matches(info)


def _names_job(path: Path, job_id: int) -> bool:
    """Whether `path` is a regular `.error.json` written for `job_id`."""
    if not _is_regular(path):
        return False
    try:
        reason = json.loads(read_regular_file(path, ERROR_FILE_MAX_BYTES))
    except (OSError, InputError, ValueError):
        return False
    return isinstance(reason, dict) and reason.get("job_id") == job_id


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def purge(
    settings: Settings,
    store: HousekeepingStore,
    days: float,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PurgeReport:
    """Delete final jobs finished more than `days` days ago with their archived files,
    stopped or long-silent daemons' rows and empty schedule fires (see `cutoffs`)."""
    cut = cutoffs(now or store.clock(), days)
    report = PurgeReport()
    after = 0
    while batch := store.expired_jobs(cut.jobs, after_id=after):
        after = batch[-1].id
        for job in batch:
            for path in archived_files(settings, job):
                report.files += 1 if dry_run or _unlink(path) else 0
        report.jobs += len(batch) if dry_run else store.delete_jobs([j.id for j in batch], cut.jobs)
    if dry_run:
        report.workers = store.count_stale_workers(cut.stopped_workers, cut.silent_workers)
        report.fires = store.count_empty_fires(cut.empty_fires)
    else:
        report.workers = store.delete_stale_workers(cut.stopped_workers, cut.silent_workers)
        report.fires = store.delete_empty_fires(cut.empty_fires)
    return report


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:  # another daemon's purge was first
        return False
    except OSError as exc:
        event("housekeeping.file_error", logging.WARNING, path=str(path), error=str(exc))
        return False
    return True


class Housekeeping(BackgroundLoop):
    """The daemon's daily purge with `retention_days` (0: keep everything)."""

    name = "housekeeping"
    interval = HOUSEKEEPING_INTERVAL

    def __init__(
        self,
        settings: Settings,
        store: HousekeepingStore,
        first_delay: float = FIRST_RUN_DELAY,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.first_delay = first_delay
        self.clock = clock
        self._waited = False
        self.last_report: PurgeReport | None = None

    def step(self) -> float | None:
        if not self._waited:
            self._waited = True
            return self.first_delay
        days = self.settings.retention_days
        if days > 0:
            report = purge(self.settings, self.store, days, now=self.clock())
            self.last_report = report
            event(
                "housekeeping.purged",
                retention_days=days,
                jobs=report.jobs,
                files=report.files,
                workers=report.workers,
                fires=report.fires,
            )
        return self.interval
