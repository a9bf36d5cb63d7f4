"""Sweeps and schedules on a real SQLite store (no model): links are not followed, a bad
name costs only that file, the "already seen" memory survives a restart and the purge of
old jobs, a hung fire is noticed, and a reload never turns schedules off."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

import worker.sources.sweep as sweep_module
from worker.config import Settings, load_settings
from worker.io.safe_read import read_beneath
from worker.pipelines.spec import Pipeline
from worker.queue.database import make_db_engine
from worker.queue.jobs import JobStore
from worker.queue.migrate import upgrade
from worker.queue.outage import DatabaseUnavailable
from worker.sources.schedules import Scheduler
from worker.sources.sweep import Sweeper

pytestmark = pytest.mark.timeout(120)
PROMPT = "Q: {{ input }}"
T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", settle_seconds=0)


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return JobStore(make_db_engine(url))


def pipelines(schedule: str = "0 2 * * *", sweep: str = "swept/**/*.txt") -> dict[str, Pipeline]:
    return {"s": Pipeline(name="s", prompt=PROMPT, schedule=schedule, sweep=(sweep,))}


def scheduler(settings: Settings, store: JobStore, **kw: str) -> Scheduler:
    return Scheduler(settings, store, pipelines(**kw), "w", enqueue_inbox=lambda _p: [])


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []

    def counting(root: Path, relative: str, limit: int) -> bytes:
        seen.append(relative)
        return read_beneath(root, relative, limit)

    monkeypatch.setattr(sweep_module, "read_beneath", counting)
    return seen


def test_links_in_a_swept_tree_are_not_followed(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    swept = settings.data_dir / "swept"
    swept.mkdir(parents=True)
    (swept / "mine.txt").write_text("mine")
    (swept / "x").symlink_to(".")  # glob.glob's walk was exponential in these
    (swept / "y").symlink_to(".")
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (swept / "escape").symlink_to(outside)
    started = time.monotonic()
    jobs = scheduler(settings, store).fire("s", T0) or []
    assert time.monotonic() - started < 5
    assert [store.get(j).source_path for j in jobs] == [str((swept / "mine.txt").resolve())]  # type: ignore[union-attr]


def test_a_bad_name_costs_only_that_file(settings: Settings, store: JobStore) -> None:
    swept = settings.data_dir / "swept"
    swept.mkdir(parents=True)
    (swept / "a.txt").write_text("a")
    with open(os.fsencode(swept) + b"/b\xff.txt", "wb") as handle:
        handle.write(b"not utf-8 name")
    (swept / "c.txt").write_text("c")
    jobs = scheduler(settings, store).fire("s", T0) or []
    names = sorted(Path(store.get(j).source_path or "").name for j in jobs)  # type: ignore[union-attr]
    assert names == ["a.txt", "c.txt"]


def test_the_memory_survives_a_restart_and_the_purge_of_jobs(
    settings: Settings, store: JobStore, reads: list[str]
) -> None:
    swept = settings.data_dir / "swept"
    swept.mkdir(parents=True)
    for name in ("one.txt", "two.txt"):
        (swept / name).write_text(name)
    assert len(scheduler(settings, store).fire("s", T0) or []) == 2
    reads.clear()
    restarted = scheduler(settings, store)  # a new process: only the database remembers
    assert restarted.fire("s", T0 + timedelta(days=1)) == []
    assert reads == []  # unchanged files are not even read
    with store.db.begin() as conn:  # retention purged the old jobs
        conn.execute(text("DELETE FROM jobs"))
    assert restarted.fire("s", T0 + timedelta(days=2)) == []
    (swept / "two.txt").write_text("two, edited")
    assert len(restarted.fire("s", T0 + timedelta(days=3)) or []) == 1
    (swept / "one.txt").unlink()
    restarted.fire("s", T0 + timedelta(days=4))
    assert sorted(restarted.sweeper.memory.load("s")) == [str((swept / "two.txt").resolve())]


def test_a_walk_out_of_budget_says_so_and_forgets_nothing(
    settings: Settings, store: JobStore
) -> None:
    swept = settings.data_dir / "swept"
    swept.mkdir(parents=True)
    for i in range(20):
        (swept / f"f{i:02d}.txt").write_text(str(i))
    assert len(scheduler(settings, store).fire("s", T0) or []) == 20
    small = settings.model_copy(update={"sweep_max_entries": 5})
    report = Scheduler(small, store, pipelines(), "w", lambda _p: []).sweeper.sweep_report(
        "s", ("swept/**/*.txt",)
    )
    assert report.truncated and report.job_ids == []
    assert len(scheduler(settings, store).sweeper.memory.load("s")) == 20


def test_a_hung_fire_is_noticed_and_does_not_hold_up_stop_or_reload(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    entered = threading.Event()

    def hanging(_self: object, _pipeline: str, _patterns: object) -> list[int]:
        entered.set()
        release.wait(60)
        return []

    monkeypatch.setattr(sweep_module.Sweeper, "sweep", hanging)
    monkeypatch.setattr("worker.sources.schedules.STOP_WAIT_SECONDS", 0.5)
    running = scheduler(settings, store, schedule="* * * * * *")
    running.fire_stall_after = 1.0
    running.start()
    try:
        assert entered.wait(10)
        time.sleep(2.5)  # later fires come and are skipped; the hung one is past its limit
        assert running.stalled()
        assert [f.pipeline for f in running.hung()] == ["s"]
        started = time.monotonic()
        running.reload(pipelines(schedule="*/2 * * * * *"))
        assert time.monotonic() - started < 2
    finally:
        started = time.monotonic()
        running.stop()
        assert time.monotonic() - started < 5
        release.set()


def test_a_fire_is_judged_hung_by_its_progress_not_its_whole_length(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fire that sweeps and then takes its inbox (each phase within its own budget) is
    not hung for having run longer than fire_stall_after in all; a phase that stops
    making progress still is."""
    inbox_entered = threading.Event()
    release = threading.Event()

    def slow_sweep(_self: object, _pipeline: str, _patterns: object) -> list[int]:
        time.sleep(1.5)  # within its budget: less than fire_stall_after
        return []

    def stuck_inbox(_pipeline: str) -> list[int]:
        inbox_entered.set()
        release.wait(30)
        return []

    monkeypatch.setattr(sweep_module.Sweeper, "sweep", slow_sweep)
    both = {
        "s": Pipeline(
            name="s",
            prompt=PROMPT,
            schedule="0 2 * * *",
            sweep=("swept/*.txt",),
            inbox_mode="scheduled",
        )
    }
    running = Scheduler(settings, store, both, "w", enqueue_inbox=stuck_inbox)
    running.fire_stall_after = 2.0

    def work() -> None:
        running.fire("s", T0)

    try:
        assert running._launch("s", T0, work)
        assert inbox_entered.wait(10)
        time.sleep(1.0)  # 2.5 s into the fire, 1 s into its inbox phase
        assert running.hung() == [] and not running.stalled()
        time.sleep(1.5)  # the inbox phase itself makes no progress past the limit
        assert [f.pipeline for f in running.hung()] == ["s"]
    finally:
        release.set()


def test_a_reload_during_a_database_outage_keeps_schedules_on(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = scheduler(settings, store, schedule="* * * * * *")
    running.start()
    try:

        def down(_name: str) -> None:
            raise DatabaseUnavailable("the database is down")

        monkeypatch.setattr(running.fires, "last_fire", down)
        running.reload(pipelines(schedule="*/2 * * * * *"))  # does not raise
        assert running._scheduler is not None and running._scheduler.running
        assert list(running.triggers) == ["s"]
        # A failure to build the new set leaves the old one firing.
        monkeypatch.setattr(running, "_new_scheduler", lambda: 1 / 0)
        old = running._scheduler
        with pytest.raises(ZeroDivisionError):
            running.reload(pipelines(schedule="*/3 * * * * *"))
        assert running._scheduler is old and old.running
    finally:
        running.stop()


def test_a_fire_that_sees_an_empty_mount_point_forgets_nothing(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"settle_seconds": 0.0})
    share = tmp_path / "share"
    share.mkdir()
    for i in range(3):
        doc = share / f"doc{i}.txt"
        doc.write_text(f"document {i}")
        os.utime(doc, (time.time() - 3600, time.time() - 3600))
    sweeper = Sweeper(settings, store)
    assert len(sweeper.sweep("p", [str(share / "*.txt")])) == 3
    with store.db.begin() as conn:  # retention purges the jobs; the memory stays
        conn.execute(text("DELETE FROM jobs"))
    assert sweeper.sweep("p", [str(share / "*.txt")]) == []
    hidden = tmp_path / "hidden"  # unmounted for one fire: an empty mount point
    share.rename(hidden)
    share.mkdir()
    assert sweeper.sweep("p", [str(share / "*.txt")]) == []
    share.rmdir()  # gone for one fire: the root cannot be opened
    assert sweeper.sweep("p", [str(share / "*.txt")]) == []
    hidden.rename(share)  # back, nothing changed: nothing runs again
    assert sweeper.sweep("p", [str(share / "*.txt")]) == []
