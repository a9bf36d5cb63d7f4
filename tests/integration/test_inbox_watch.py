"""The inbox watcher with real inotify events and a real SQLite job table."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import worker.sources.inbox as inbox
from worker.config import Settings, load_settings
from worker.io.safe_read import read_regular_file
from worker.queue.database import make_db_engine
from worker.queue.jobs import JobStore
from worker.queue.migrate import upgrade
from worker.sources.inbox import InboxWatcher

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A long rescan interval: only inotify events bring the watcher back to a file.
    return load_settings(data_dir=tmp_path / "data", settle_seconds=0.1, rescan_interval=3600)


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return JobStore(make_db_engine(url))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the watcher reads, in order."""
    seen: list[Path] = []

    def counting(path: Path, limit: int) -> bytes:
        seen.append(path)
        return read_regular_file(path, limit)

    monkeypatch.setattr(inbox, "read_regular_file", counting)
    return seen


@pytest.fixture
def watcher(settings: Settings, store: JobStore) -> Iterator[InboxWatcher]:
    running = InboxWatcher(settings, store, ["docs"])
    running.start()
    yield running
    running.stop()


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_waiting_file_read_by_others_is_read_once(
    settings: Settings, store: JobStore, reads: list[Path], watcher: InboxWatcher
) -> None:
    """Reads raise inotify events (open, close without write); they are not changes.
    Looking again at each one made the watcher re-read the file and re-query the job
    table five times a second, for as long as the file waited for its turn."""
    path = settings.folder("inbox", "docs") / "report.txt"
    path.write_text("quarterly figures")
    wait_for(lambda: len(store.list_jobs()) == 1)
    for _ in range(5):  # the runner, an operator's `cat`, a backup: reads, not changes
        path.read_bytes()
        time.sleep(0.3)
    assert reads == [path]
    assert len(store.list_jobs()) == 1


def test_a_rewritten_waiting_file_is_a_new_version(
    settings: Settings, store: JobStore, reads: list[Path], watcher: InboxWatcher
) -> None:
    path = settings.folder("inbox", "docs") / "report.txt"
    path.write_text("draft")
    wait_for(lambda: len(store.list_jobs()) == 1)
    path.write_text("final, longer")
    wait_for(lambda: len(store.list_jobs()) == 2)
    assert reads == [path, path]


def test_rescan_soon_scans_at_the_next_tick(
    settings: Settings, store: JobStore, watcher: InboxWatcher
) -> None:
    """What the watcher does when inotify reports lost events (its queue overflowed)."""
    watcher.stop()  # no events from here on: only a rescan finds the file
    path = settings.folder("inbox", "docs") / "missed.txt"
    path.write_text("arrived while inotify's queue overflowed")
    watcher.tick()
    assert store.list_jobs() == []  # the rescan is an hour away
    watcher.rescan_soon()
    watcher.tick()
    time.sleep(0.2)  # settle_seconds
    watcher.tick()
    assert [j.source_path for j in store.list_jobs()] == ["docs/missed.txt"]
