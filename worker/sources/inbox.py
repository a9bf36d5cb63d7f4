"""Watch folders: files that finish arriving in `inbox/<pipeline>/` become jobs.

watchdog events make it prompt; a first scan and a periodic rescan make it complete
(inotify overflow, network file systems, files that arrived while down). Only `inbox/`
and each `inbox/<pipeline>/` are watched, never below: a submitter's tree of folders
costs no inotify watch. When inotify has no watch left (ENOSPC), the watcher says so
and carries on with rescans alone.

The cost of a rescan follows the changes, not the backlog: each queued version's
`(size, mtime_ns, inode)` is remembered (`inbox_memory`), and an unchanged waiting
file is skipped after one `lstat`, without being read or looked up in the job table.
After a restart the memory is filled from the live file jobs in one query, and the
first scan runs in the watcher's thread, after READY. Each tick works for at most
TICK_BUDGET_SECONDS, so a big backlog of new files never stalls the loop.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path

from worker.background import BackgroundLoop
from worker.config import Settings
from worker.errors import InputError
from worker.io.files import (
    FileRef,
    FileVersion,
    archive_original,
    content_digest,
    file_key,
    make_inbox,
)
from worker.io.instance import instance_id
from worker.io.naming import is_ignored_name, name_problem, printable_path
from worker.io.safe_read import read_regular_file
from worker.logs import event
from worker.queue.file_jobs import FileJobReads
from worker.queue.jobs import JobStore, NewJob
from worker.queue.models import FINAL_STATUSES, Job, JobKind, JobStatus
from worker.queue.outage import DatabaseUnavailable
from worker.sources.inbox_events import FolderEvents
from worker.sources.inbox_memory import QueuedVersions
from worker.sources.settle import Observation, is_settled, observe
from worker.sources.walk import Budget

TICK_SECONDS = 0.2
# Work one tick may do (settle checks, reads, enqueues) before it yields to the next.
TICK_BUDGET_SECONDS = 5.0
# How often the jobs of remembered versions are looked up (in chunks), to archive the
# originals of jobs that became final while their move failed, and to forget them.
LEFTOVER_CHECK_SECONDS = 60.0


class InboxWatcher(BackgroundLoop):
    """Finds settled files in the inboxes and enqueues one job per file version."""

    name = "inbox-watcher"
    event_prefix = "inbox"
    interval = TICK_SECONDS
    # A tick that takes this long is stuck (reads are bounded and never block): the
    # watchdog stops, and systemd restarts a daemon whose intake stopped.
    stall_after = 120.0

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        pipelines: Collection[str],
        on_enqueued: Callable[[], None] = lambda: None,
        held: Collection[str] = (),
    ) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.pipelines = set(pipelines)
        # Inboxes with inbox_mode "scheduled": enqueued only by `enqueue_inbox` at fires.
        self.held = frozenset(held)
        # Pipelines whose intake an operator paused: their files wait in the inbox.
        self.paused: Callable[[], Collection[str]] = frozenset
        self.on_enqueued = on_enqueued
        self.root = settings.data_dir / "inbox"
        self._lock = threading.Lock()
        self._touched: dict[Path, bool] = {}  # path -> close-after-write seen
        self._candidates: dict[Path, Observation] = {}
        self._warned: set[Path] = set()
        self._failing: set[Path] = set()  # files whose last try raised: logged once each
        self.queued = QueuedVersions()  # versions that have a job: skipped by rescans
        self.files = FileJobReads(store.db)
        self.events = FolderEvents(
            self._touch, self.rescan_soon, f"rescans every {settings.rescan_interval:g} s"
        )
        self._last_rescan = float("-inf")
        self._last_leftover_check = time.monotonic()
        self._scanned = False  # the first scan is done (until then, `pending` is not 0)

    # Life cycle ------------------------------------------------------------
    def watch(self, pipelines: Collection[str], held: Collection[str] = ()) -> None:
        """Watch the inboxes of `pipelines` (creating them) from now on (a reload)."""
        for name in pipelines:
            folder = self.settings.folder("inbox", name)
            make_inbox(folder, self.settings.inbox_mode)
            self.events.watch(folder)
        self.pipelines = set(pipelines)
        self.held = frozenset(held)
        self.rescan_soon()  # files that waited for a new pipeline: now

    def before_start(self) -> None:
        """Create the inboxes, start watchdog's observer (inbox/ and inbox/<pipeline>/
        only), and remember the file versions that already have a live job. The first
        scan is the loop's first tick (after READY; `pending` counts it until done)."""
        self.events.start()
        self.root.mkdir(parents=True, exist_ok=True)
        self.events.watch(self.root)
        self.watch(self.pipelines, self.held)
        self._remember_live_jobs()

    def after_stop(self) -> None:
        self.events.stop()

    def pending(self) -> int:
        """Files seen in the inboxes that are not yet jobs (still arriving or not yet
        checked); 1 more until the first scan is done (so --once waits for it)."""
        with self._lock:
            return len(self._candidates) + len(self._touched) + (0 if self._scanned else 1)

    def rescan_soon(self) -> None:
        """Scan every inbox at the next tick (events were lost, pipelines changed, an outage)."""
        self._last_rescan = float("-inf")

    def _touch(self, path: Path, closed: bool) -> None:
        if path.parent.parent != self.root or path.parent.name in self.held:
            return
        if path.parent.name in self.paused():
            return  # only inbox/<pipeline>/<name>, and not the inboxes taken at fires
        with self._lock:
            self._touched[path] = self._touched.get(path, False) or closed

    # One pass ----------------------------------------------------------------
    def step(self) -> float | None:
        try:
            self.tick()
        except DatabaseUnavailable:
            self.rescan_soon()  # after the outage, rescan everything
            raise
        except Exception:  # nothing may kill the watcher
            logging.getLogger(__name__).exception("watcher tick failed")
            event("inbox.error", logging.ERROR)
        return None

    def tick(self) -> None:
        """Rescan if due, check leftovers if due, then enqueue every candidate that has
        settled, for at most TICK_BUDGET_SECONDS (the rest waits for the next tick)."""
        now = time.monotonic()
        if now - self._last_rescan >= self.settings.rescan_interval:
            self._last_rescan = now
            self.rescan()
        if now - self._last_leftover_check >= LEFTOVER_CHECK_SECONDS:
            self._last_leftover_check = now
            self.check_leftovers()
        deadline = now + TICK_BUDGET_SECONDS
        with self._lock:
            touched, self._touched = self._touched, {}
        items = list(touched.items())
        for index, (path, closed) in enumerate(items):
            if time.monotonic() > deadline:
                with self._lock:  # not looked at yet: next tick
                    for rest, was_closed in items[index:]:
                        self._touched[rest] = self._touched.get(rest, False) or was_closed
                return
            self._consider_one(path, closed, now)
        for path in list(self._candidates):
            if time.monotonic() > deadline:
                return
            self._consider_one(path, False, now)

    def rescan(self) -> None:
        """Look at every inbox file once: an unchanged queued version costs one lstat;
        anything else becomes a candidate. Forgets what is gone."""
        present: set[Path] = set()
        for path, info in self._scan():
            present.add(path)
            if info is not None and self.queued.unchanged(path, info):
                continue
            self._touch(path, False)
        self.queued.prune(present)
        self._warned &= present
        self._failing &= present
        for path in [p for p in self._candidates if p not in present]:
            self._candidates.pop(path, None)
        with self._lock:
            self._scanned = True

    def _consider_one(self, path: Path, closed: bool, now: float) -> None:
        # One file's problem (a name the file system rejects, a full disk while archiving)
        # must not stop the others; it is logged once and tried again at the next rescan.
        try:
            self._consider(path, closed, now)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            self._candidates.pop(path, None)
            if path not in self._failing:
                self._failing.add(path)
                event(
                    "inbox.file_error",
                    logging.WARNING,
                    path=printable_path(path),
                    error=f"{type(exc).__name__}: {exc}",
                )
        else:
            self._failing.discard(path)

    def _scan(self) -> list[tuple[Path, os.stat_result | None]]:
        """Every entry of every inbox/<pipeline>/ (not below), with its lstat if it has one
        (held inboxes too: their memory is pruned like the others; `_touch` skips them)."""
        found: list[tuple[Path, os.stat_result | None]] = []
        try:
            folders = [e for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return found
        for folder in folders:
            try:
                entries = list(os.scandir(folder.path))
            except OSError:
                continue
            for entry in entries:
                try:
                    info: os.stat_result | None = entry.stat(follow_symlinks=False)
                except OSError:
                    info = None
                found.append((Path(entry.path), info))
        return found

    def _remember_live_jobs(self) -> None:
        """Fill the memory from the job table: versions with a live job are not read again
        by the first scan after a restart (one query; an outage only costs the reads)."""
        try:
            live = self.files.live(self.pipelines)
        except DatabaseUnavailable as exc:
            event("inbox.memory_unavailable", logging.WARNING, error=str(exc))
            return
        for job in live:
            version = FileVersion.from_key(job.key)
            pipeline, _, name = job.source_path.partition("/")
            if version is None or pipeline not in self.pipelines or not name or "/" in name:
                continue
            path = self.settings.folder("inbox", pipeline) / name
            self.queued.remember(path, version.size, version.mtime_ns, None, job.id, job.key)

    def check_leftovers(self) -> None:
        """Look up the jobs of remembered versions (CHUNK ids per query): a final one's
        original is archived if it is still there (its move failed), and forgotten, so
        the next rescan looks at the file once more."""
        entries = list(self.queued.with_jobs())
        if not entries:
            return
        statuses = self.files.statuses([e.job_id for _, e in entries if e.job_id is not None])
        for path, entry in entries:
            status = statuses.get(entry.job_id or 0)
            if status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING):
                continue
            self.queued.forget(path)
            if status is not None:
                job = self.store.get_by_key(entry.key)
                if job is not None:
                    self._archive_leftover(FileRef(path.parent.name, path.name), job)

    def _consider(self, path: Path, closed: bool, now: float) -> None:
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._candidates.pop(path, None)
            self.queued.forget(path)
            return
        if self.queued.unchanged(path, info):  # an event, but the queued version is there
            self._candidates.pop(path, None)
            return
        problem = name_problem(path.name)
        if is_ignored_name(path.name) or not stat.S_ISREG(info.st_mode) or problem:
            self._candidates.pop(path, None)
            if not is_ignored_name(path.name) and path not in self._warned:
                self._warned.add(path)
                if not problem:
                    problem = "symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
                event("inbox.ignored", logging.WARNING, path=printable_path(path), reason=problem)
            return
        obs = observe(self._candidates.get(path), info.st_size, info.st_mtime_ns, now, closed)
        self._candidates[path] = obs
        if not is_settled(obs, now, time.time_ns(), self.settings.settle_seconds):
            return
        del self._candidates[path]
        self._enqueue(path, info)

    def enqueue_inbox(self, pipeline: str, budget: Budget | None = None) -> list[int]:
        """Enqueue the files waiting in `inbox/<pipeline>/` now (a schedule fire), in name
        order, within `budget` (by default `sweep_max_entries` files read and
        `sweep_max_seconds`, as a sweep): a bigger backlog is cut off, logged
        (`inbox.truncated`), and its rest taken by the next fires, so a legitimate fire
        never runs long enough to look hung.

        Files written to within the settle time are left for the next fire.
        Returns the ids of the new jobs.
        """
        if budget is None:
            budget = Budget(self.settings.sweep_max_entries, self.settings.sweep_max_seconds)
        folder = self.settings.folder("inbox", pipeline)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except FileNotFoundError:
            return []
        job_ids: list[int] = []
        for index, entry in enumerate(entries):
            if budget.exhausted():
                event(
                    "inbox.truncated",
                    logging.WARNING,
                    pipeline=pipeline,
                    jobs=len(job_ids),
                    read=budget.entries,
                    left=len(entries) - index,
                    seconds=round(time.monotonic() - budget.started, 1),
                    hint="the next fires take the rest; or raise sweep_max_entries / "
                    "sweep_max_seconds",
                )
                break
            path = Path(entry.path)
            # One file's problem (a name that is not UTF-8, a read error) is logged and
            # skipped: the files after it are still taken.
            try:
                job_id = self._enqueue_held(path, budget)
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                event(
                    "inbox.file_error",
                    logging.WARNING,
                    path=printable_path(path),
                    error=f"{type(exc).__name__}: {exc}",
                )
                continue
            if job_id is not None:
                job_ids.append(job_id)
        return job_ids

    def _enqueue_held(self, path: Path, budget: Budget) -> int | None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if is_ignored_name(path.name) or not stat.S_ISREG(info.st_mode):
            return None
        problem = name_problem(path.name)
        if problem is not None:
            if path not in self._warned:  # once per file, not at every fire
                self._warned.add(path)
                event("inbox.ignored", logging.WARNING, path=printable_path(path), reason=problem)
            return None
        if time.time_ns() - info.st_mtime_ns < self.settings.settle_seconds * 1e9:
            return None
        if self.queued.unchanged(path, info):
            return None
        # Only files that are read count against the entries: queued files still waiting
        # to run cost one lstat, and a backlog of them must not use up every next fire.
        budget.entries += 1
        return self._enqueue(path, info)

    def _enqueue(self, path: Path, info: os.stat_result) -> int | None:
        ref = FileRef(pipeline=path.parent.name, name=path.name)
        if info.st_size > self.settings.max_input_bytes:
            digest = "oversize"  # not read: the runner fails it with the size limit
        else:
            try:
                data = read_regular_file(path, self.settings.max_input_bytes)
            except FileNotFoundError:
                return None
            except (OSError, InputError) as exc:  # swapped for a FIFO, a link, a bigger file
                event(
                    "inbox.unreadable", logging.WARNING, path=printable_path(path), error=str(exc)
                )
                return None
            digest = content_digest(data)
        key = file_key(ref, info.st_size, info.st_mtime_ns, digest)
        job_id = self.store.enqueue(
            NewJob(
                pipeline=ref.pipeline,
                source=JobKind.FILE,
                source_path=ref.source_path,
                idempotency_key=key,
                origin=instance_id(self.settings.data_dir),  # only this folder's daemons
            )
        )
        if job_id is not None:
            event("job.enqueued", job_id=job_id, pipeline=ref.pipeline, file=ref.name)
            self.queued.remember(path, info.st_size, info.st_mtime_ns, info.st_ino, job_id, key)
            self.on_enqueued()
            return job_id
        # This file version already has a job. If that job is final, a crash came between
        # recording its outcome and moving the original: finish the move now.
        job = self.store.get_by_key(key)
        if job is None:
            return None
        if job.status in FINAL_STATUSES:
            self._archive_leftover(ref, job)
        else:
            self.queued.remember(path, info.st_size, info.st_mtime_ns, info.st_ino, job.id, key)
        return None

    def _archive_leftover(self, ref: FileRef, job: Job) -> None:
        key = job.idempotency_key
        succeeded = job.status == JobStatus.SUCCEEDED
        archived = archive_original(
            self.settings,
            ref,
            job.id,
            succeeded,
            job.error,
            job.finished_at,
            version=FileVersion.from_key(key),
        )
        if archived is not None:
            self.store.set_archived_path(job.id, str(archived))
            event("inbox.archived_leftover", job_id=job.id, file=ref.name, to=str(archived))
