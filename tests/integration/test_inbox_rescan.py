"""The watcher's cost follows the changes, not the backlog (issue 20, done-when 2), and
its watches stay on inbox/ and inbox/<pipeline>/ (real inotify, real SQLite)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

import worker.sources.inbox as inbox
from worker.config import Settings, load_settings
from worker.io.safe_read import read_regular_file
from worker.queue.database import make_db_engine
from worker.queue.jobs import JobStore
from worker.queue.migrate import upgrade
from worker.sources.inbox import InboxWatcher

pytestmark = pytest.mark.timeout(120)
BACKLOG = 300


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", settle_seconds=0, rescan_interval=3600)


class Counts:
    """Files read by the watcher and SQL statements run on the store's engine."""

    def __init__(self) -> None:
        self.reads: list[Path] = []
        self.statements = 0

    def reset(self) -> None:
        self.reads.clear()
        self.statements = 0


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counts:
    counted = Counts()

    def counting(path: Path, limit: int) -> bytes:
        counted.reads.append(path)
        return read_regular_file(path, limit)

    monkeypatch.setattr(inbox, "read_regular_file", counting)
    return counted


@pytest.fixture
def store(tmp_path: Path, counts: Counts) -> Iterator[JobStore]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    engine = make_db_engine(url)

    @event.listens_for(engine, "before_cursor_execute")
    def _count(*_args: Any) -> None:
        counts.statements += 1

    yield JobStore(engine)
    engine.dispose()


def rescan(watcher: InboxWatcher) -> None:
    watcher.rescan_soon()
    watcher.tick()


def backlog(settings: Settings, count: int) -> list[Path]:
    folder = settings.folder("inbox", "docs")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"waiting-{i:04d}.txt" for i in range(count)]
    for path in paths:
        path.write_text(f"document {path.name}")
    return paths


def test_a_rescan_over_a_waiting_backlog_reads_nothing_and_asks_nothing(
    settings: Settings, store: JobStore, counts: Counts
) -> None:
    paths = backlog(settings, BACKLOG)
    watcher = InboxWatcher(settings, store, ["docs"])
    rescan(watcher)
    assert len(store.list_jobs(limit=None)) == BACKLOG
    assert len(counts.reads) == BACKLOG  # each version read once, to queue it
    counts.reset()

    for _ in range(3):  # every rescan_interval, as long as the backlog waits
        rescan(watcher)
    assert counts.reads == []
    assert counts.statements == 0

    # A change costs that file only: one read, one enqueue.
    changed = paths[7]
    changed.write_text("a new version, longer than before")
    rescan(watcher)
    assert counts.reads == [changed]
    assert 0 < counts.statements <= 6
    counts.reset()

    # A file replaced by another of the same size and mtime (a new inode) is looked at.
    info = paths[8].stat()
    replacement = paths[8].with_name(".replacement")
    replacement.write_text(paths[8].read_text().upper())
    os.utime(replacement, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.replace(replacement, paths[8])
    rescan(watcher)
    assert counts.reads == [paths[8]]
    counts.reset()

    # Files that are gone are forgotten, and so are the warnings about them.
    link = settings.folder("inbox", "docs") / "link.txt"
    link.symlink_to(paths[0])
    rescan(watcher)
    assert link in watcher._warned
    for path in paths[100:]:
        path.unlink()
    link.unlink()
    rescan(watcher)
    assert len(watcher.queued) == 100
    assert link not in watcher._warned


def test_after_a_restart_the_first_scan_reads_no_queued_file_again(
    settings: Settings, store: JobStore, counts: Counts
) -> None:
    backlog(settings, BACKLOG)
    first = InboxWatcher(settings, store, ["docs"])
    rescan(first)
    counts.reset()
    restarted = InboxWatcher(settings, store, ["docs"])
    restarted.start()
    try:
        deadline = time.monotonic() + 30
        while restarted.pending():  # the first scan runs in the loop, after start
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert counts.reads == []
        assert counts.statements <= 2  # the live file jobs, read in one query
        assert len(store.list_jobs(limit=None)) == BACKLOG
    finally:
        restarted.stop()


def _inotify_watches() -> int:
    """inotify watches this process holds (from /proc/self/fdinfo)."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
                total += sum(1 for line in info if line.startswith("inotify wd:"))
        except OSError:
            continue
    return total


def test_folders_inside_an_inbox_cost_no_watch(settings: Settings, store: JobStore) -> None:
    watcher = InboxWatcher(settings, store, ["docs", "other"])
    watcher.start()
    try:
        inbox_root = settings.data_dir / "inbox"
        assert watcher.events.watched == [inbox_root, inbox_root / "docs", inbox_root / "other"]
        before = _inotify_watches()
        assert before == 3
        tree = settings.folder("inbox", "docs")
        for i in range(30):
            (tree / f"d{i}" / "deeper").mkdir(parents=True)
            (tree / f"d{i}" / "deeper" / "x.txt").write_text("not an input")
        time.sleep(0.5)
        assert _inotify_watches() == before
        (tree / "real.txt").write_text("an input")
        deadline = time.monotonic() + 10
        while not store.list_jobs():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert [j.source_path for j in store.list_jobs()] == ["docs/real.txt"]
    finally:
        watcher.stop()


def test_without_inotify_watches_rescans_carry_on(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watchdog.observers.api import BaseObserver

    def exhausted(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(BaseObserver, "schedule", exhausted)
    fast = settings.model_copy(update={"rescan_interval": 0.2})
    watcher = InboxWatcher(fast, store, ["docs"])
    watcher.start()  # does not fail: it warns and rescans
    try:
        assert watcher.events.failed
        (fast.folder("inbox", "docs") / "found.txt").write_text("found by a rescan")
        deadline = time.monotonic() + 10
        while not store.list_jobs():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        watcher.stop()
