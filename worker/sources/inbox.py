"""Watch folders: files that finish arriving in `inbox/<pipeline>/` become jobs.

watchdog events make it prompt; a start-up scan and a periodic rescan make it
complete (inotify overflow, network file systems, files that arrived while down).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_EVENTS_LOST,
    EVENT_TYPE_OPENED,
)

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
from worker.queue.jobs import JobStore, NewJob
from worker.queue.models import FINAL_STATUSES, JobKind, JobStatus
from worker.queue.outage import DatabaseUnavailable
from worker.sources.settle import Observation, is_settled, observe

TICK_SECONDS = 0.2
# Events that say a file was read, not changed. Reading a file (the watcher's own read
# for its digest, the runner's read of its input) raises them: a watcher that looked
# again at every one re-read and re-queried every waiting file five times a second,
# for as long as it waited, on the cores the model needs (docs/performance.md).
READ_ONLY_EVENTS = frozenset({EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE})


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
        self.on_enqueued = on_enqueued
        self.root = settings.data_dir / "inbox"
        self._lock = threading.Lock()
        self._touched: dict[Path, bool] = {}  # path -> close-after-write seen
        self._candidates: dict[Path, Observation] = {}
        self._warned: set[Path] = set()
        self._failing: set[Path] = set()  # files whose last try raised: logged once each
        self._observer: Any = None
        self._last_rescan = float("-inf")

    # Life cycle ------------------------------------------------------------
    def watch(self, pipelines: Collection[str], held: Collection[str] = ()) -> None:
        """Watch the inboxes of `pipelines` (creating them) from now on (a reload)."""
        for name in pipelines:
            make_inbox(self.settings.folder("inbox", name), self.settings.inbox_mode)
        self.pipelines = set(pipelines)
        self.held = frozenset(held)
        self.rescan_soon()  # files that waited for a new pipeline: now

    def before_start(self) -> None:
        """Create the inboxes, start watchdog's observer and make the start-up scan."""
        self.watch(self.pipelines, self.held)
        self._start_observer()
        self.tick()  # the start-up scan, so --once sees what is already there

    def after_stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)

    def pending(self) -> int:
        """Files seen in the inboxes that are not yet jobs (still arriving or not yet checked)."""
        with self._lock:
            return len(self._candidates) + len(self._touched)

    def _start_observer(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type == EVENT_TYPE_EVENTS_LOST:  # inotify's queue overflowed
                    watcher.rescan_soon()
                    return
                if event.event_type in READ_ONLY_EVENTS:
                    return
                closed = event.event_type == EVENT_TYPE_CLOSED
                for raw in (event.src_path, getattr(event, "dest_path", "")):
                    if raw:
                        watcher._touch(Path(os.fsdecode(raw)), closed)

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.root), recursive=True)
        self._observer.daemon = True
        self._observer.start()

    def rescan_soon(self) -> None:
        """Scan every inbox at the next tick (events were lost, pipelines changed, an outage)."""
        self._last_rescan = float("-inf")

    def _touch(self, path: Path, closed: bool) -> None:
        if path.parent.parent != self.root or path.parent.name in self.held:
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
        """Rescan if due, then enqueue every candidate that has settled."""
        now = time.monotonic()
        if now - self._last_rescan >= self.settings.rescan_interval:
            self._last_rescan = now
            for path in self._scan():
                self._touch(path, False)
        with self._lock:
            touched, self._touched = self._touched, {}
        for path, closed in touched.items():
            self._consider_one(path, closed, now)
        for path in list(self._candidates):
            self._consider_one(path, False, now)

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

    def _scan(self) -> list[Path]:
        found: list[Path] = []
        try:
            folders = [e for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return found
        for folder in folders:
            try:
                found.extend(Path(e.path) for e in os.scandir(folder.path))
            except OSError:
                continue
        return found

    def _consider(self, path: Path, closed: bool, now: float) -> None:
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
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

    def enqueue_inbox(self, pipeline: str) -> list[int]:
        """Enqueue every file waiting in `inbox/<pipeline>/` now (a schedule fire).

        Files written to within the settle time are left for the next fire.
        Returns the ids of the new jobs.
        """
        folder = self.settings.folder("inbox", pipeline)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except FileNotFoundError:
            return []
        job_ids: list[int] = []
        for entry in entries:
            path = Path(entry.path)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if is_ignored_name(path.name) or not stat.S_ISREG(info.st_mode):
                continue
            if time.time_ns() - info.st_mtime_ns < self.settings.settle_seconds * 1e9:
                continue
            job_id = self._enqueue(path, info)
            if job_id is not None:
                job_ids.append(job_id)
        return job_ids

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
            self.on_enqueued()
            return job_id
        self._finish_leftover(ref, key)
        return None

    def _finish_leftover(self, ref: FileRef, key: str) -> None:
        # This file version already has a job. If that job is final, a crash came between
        # recording its outcome and moving the original: finish the move now.
        job = self.store.get_by_key(key)
        if job is None or job.status not in FINAL_STATUSES:
            return
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
