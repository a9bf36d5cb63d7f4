"""Schedules on real databases (SQLite, and PostgreSQL with EDGE_WORKER_TEST_PG_URL), no model.

Two `Scheduler`s on one database stand for two daemons: each has its own engine.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.clock import frozen
from worker.config import Settings, load_settings
from worker.pipelines.spec import Pipeline
from worker.queue.database import make_db_engine
from worker.queue.fires import FireStore
from worker.queue.jobs import JobStore
from worker.queue.migrate import upgrade
from worker.sources.inbox import InboxWatcher
from worker.sources.schedules import Scheduler
from worker.sources.walk import Budget

pytestmark = pytest.mark.timeout(120)
PROMPT = "Q: {{ input }}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", settle_seconds=0, rescan_interval=0.1)


def sweeping(schedule: str = "* * * * * *", misfire_grace: float = 3600) -> dict[str, Pipeline]:
    pipeline = Pipeline(
        name="sweeper",
        prompt=PROMPT,
        schedule=schedule,
        sweep=("sweep/*.txt",),
        misfire_grace=misfire_grace,
    )
    return {"sweeper": pipeline}


class CountingScheduler(Scheduler):
    """A Scheduler that remembers which fires it acted on and which it found taken."""

    def __init__(self, settings: Settings, url: str, pipelines: dict[str, Pipeline], name: str):
        # Its own engine, as a separate daemon would have.
        store = JobStore(make_db_engine(url))
        super().__init__(settings, store, pipelines, name, enqueue_inbox=lambda _p: [])
        self.won: list[datetime] = []
        self.lost: list[datetime] = []

    def fire(self, name: str, fire_time: datetime, catch_up: bool = False) -> list[int] | None:
        result = super().fire(name, fire_time, catch_up)
        (self.won if result is not None else self.lost).append(fire_time)
        return result


def daemon(settings: Settings, url: str, pipelines: dict[str, Pipeline], name: str) -> Scheduler:
    return CountingScheduler(settings, url, pipelines, name)


def race(schedulers: list[Scheduler], fire_time: datetime) -> list[list[int] | None]:
    """Every scheduler acts on the same fire at the same moment."""
    results: list[list[int] | None] = []
    lock = threading.Lock()
    go = threading.Barrier(len(schedulers))

    def act(scheduler: Scheduler) -> None:
        go.wait()
        result = scheduler.fire("sweeper", fire_time)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=act, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def drop(settings: Settings, name: str, text: str) -> Path:
    folder = settings.data_dir / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_two_daemons_act_on_each_fire_once(settings: Settings, db_url: str) -> None:
    upgrade(db_url)
    pipelines = sweeping()
    a, b = (daemon(settings, db_url, pipelines, name) for name in ("a", "b"))
    drop(settings, "one.txt", "first")
    drop(settings, "two.txt", "second")
    start = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    outcomes: dict[datetime, list[list[int] | None]] = {}
    for second in range(4):
        if second == 2:
            drop(settings, "three.txt", "added between fires")
        fire_time = start + timedelta(seconds=second)
        outcomes[fire_time] = race([a, b], fire_time)

    for fire_time, results in outcomes.items():
        acted = [r for r in results if r is not None]
        assert len(results) == 2 and len(acted) == 1, (fire_time, results)
    enqueued = [len(next(r for r in rs if r is not None)) for rs in outcomes.values()]
    assert enqueued == [2, 0, 1, 0]  # new files at the first fire, the added one at the third

    fires = FireStore(make_db_engine(db_url))
    recorded = fires.list_fires("sweeper")
    assert sorted(f.fire_time for f in recorded) == sorted(outcomes)
    linked = [job_id for f in recorded for job_id in fires.job_ids(f.id)]
    assert len(linked) == len(set(linked)) == 3
    assert len(a.store.list_jobs()) == 3
    assert [f.jobs_enqueued for f in sorted(recorded, key=lambda f: f.fire_time)] == enqueued


def test_two_running_schedulers_share_the_fires(settings: Settings, db_url: str) -> None:
    upgrade(db_url)
    pipelines = sweeping("* * * * * *")
    drop(settings, "one.txt", "first")
    schedulers = [CountingScheduler(settings, db_url, pipelines, name) for name in ("a", "b")]
    for scheduler in schedulers:
        scheduler.start()
    time.sleep(4.5)
    for scheduler in schedulers:
        scheduler.stop()
    a, b = schedulers

    recorded = [f.fire_time for f in FireStore(make_db_engine(db_url)).list_fires("sweeper")]
    assert len(recorded) >= 3
    assert set(a.won).isdisjoint(b.won)
    assert sorted(a.won + b.won) == sorted(recorded)
    assert set(a.lost + b.lost) <= set(recorded)
    assert a.lost or b.lost, "both daemons should have tried the same fires"
    assert len(a.store.list_jobs()) == 1


def test_catch_up_makes_one_fire_for_several_missed(settings: Settings, db_url: str) -> None:
    upgrade(db_url)
    drop(settings, "one.txt", "first")
    last = datetime(2026, 3, 1, 2, 0, 0, tzinfo=UTC)
    scheduler = daemon(settings, db_url, sweeping("*/10 * * * * *", misfire_grace=60), "a")
    assert scheduler.fires.record("sweeper", last, "old-daemon", catch_up=False) is not None
    # Down from just after 02:00:00 to 02:00:25: the fires at :10 and :20 were missed.
    scheduler.store.clock = frozen(last + timedelta(seconds=25))
    assert scheduler.catch_up() == [("sweeper", last + timedelta(seconds=20))]
    newest = scheduler.fires.last_fire("sweeper")
    assert newest is not None
    assert (newest.fire_time, newest.catch_up, newest.worker, newest.jobs_enqueued) == (
        last + timedelta(seconds=20),
        True,
        "a",
        1,
    )
    assert [f.fire_time.second for f in scheduler.fires.list_fires("sweeper")] == [20, 0]
    assert scheduler.catch_up() == []  # already made


def test_no_catch_up_beyond_the_grace(settings: Settings, db_url: str) -> None:
    upgrade(db_url)
    last = datetime(2026, 3, 1, 2, 0, 0, tzinfo=UTC)
    scheduler = daemon(settings, db_url, sweeping("*/10 * * * * *", misfire_grace=3), "a")
    scheduler.fires.record("sweeper", last, "old-daemon", catch_up=False)
    scheduler.store.clock = frozen(last + timedelta(seconds=25))  # newest missed: 5 s ago
    assert scheduler.catch_up() == []
    assert len(scheduler.fires.list_fires("sweeper")) == 1


def test_sweep_enqueues_new_and_changed_files_once(settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    pipelines = {
        "sweeper": Pipeline(
            name="sweeper",
            prompt=PROMPT,
            schedule="* * * * * *",
            sweep=("sweep/*.txt", str(outside / "**" / "*.md")),
        )
    }
    scheduler = daemon(settings, url, pipelines, "a")
    t0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    one = drop(settings, "one.txt", "first")
    (outside / "deep").mkdir()
    (outside / "deep" / "notes.md").write_text("notes")
    drop(settings, "skip.csv", "not matched")
    (settings.data_dir / "sweep" / "link.txt").symlink_to(one)
    assert len(scheduler.fire("sweeper", t0) or []) == 2
    assert scheduler.fire("sweeper", t0 + timedelta(seconds=1)) == []  # nothing new
    os.utime(one)  # touched, same content: not new
    assert scheduler.fire("sweeper", t0 + timedelta(seconds=2)) == []
    one.write_text("first, edited")
    (changed,) = scheduler.fire("sweeper", t0 + timedelta(seconds=3)) or []
    job = scheduler.store.get(changed)
    assert job is not None
    assert (job.source, job.source_path) == ("sweep", str(one.resolve()))
    assert job.idempotency_key is not None and job.idempotency_key.startswith(
        f"sweep:sweeper:{one.resolve()}:"
    )
    assert one.read_text() == "first, edited"  # swept files stay where they are
    restarted = daemon(settings, url, pipelines, "b")  # knows nothing but the database
    assert restarted.fire("sweeper", t0 + timedelta(seconds=4)) == []
    (outside / "deep" / "notes.md").write_text("notes, edited")
    assert len(restarted.fire("sweeper", t0 + timedelta(seconds=5)) or []) == 1


def test_a_file_still_being_written_waits_for_the_next_fire(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", settle_seconds=30)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    scheduler = daemon(settings, url, sweeping(), "a")
    path = drop(settings, "fresh.txt", "just written")
    t0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    assert scheduler.fire("sweeper", t0) == []
    old = time.time() - 60
    os.utime(path, (old, old))
    assert len(scheduler.fire("sweeper", t0 + timedelta(seconds=1)) or []) == 1


def test_scheduled_inbox_is_taken_only_at_fires(settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    store = JobStore(make_db_engine(url))
    pipelines = {
        "nightly": Pipeline(
            name="nightly", prompt=PROMPT, schedule="0 2 * * *", inbox_mode="scheduled"
        ),
        "live": Pipeline(name="live", prompt=PROMPT),
    }
    watcher = InboxWatcher(settings, store, pipelines, held=["nightly"])
    for name in pipelines:
        settings.folder("inbox", name).mkdir(parents=True)
        (settings.folder("inbox", name) / "doc.txt").write_text(f"for {name}")
    watcher.tick()
    watcher.tick()
    assert [j.pipeline for j in store.list_jobs()] == ["live"]
    assert watcher.pending() == 0
    scheduler = Scheduler(settings, store, pipelines, "a", watcher.enqueue_inbox)
    t0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    (job_id,) = scheduler.fire("nightly", t0) or []
    job = store.get(job_id)
    assert job is not None
    assert (job.pipeline, job.source, job.source_path) == ("nightly", "file", "nightly/doc.txt")
    assert scheduler.fire("nightly", t0 + timedelta(days=1)) == []  # same file version
    assert scheduler.fires.outcome(scheduler.fires.list_fires("nightly")[-1].id).waiting == 1


def test_a_scheduled_inbox_backlog_is_taken_within_a_budget_over_fires(
    settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fire takes at most sweep_max_entries new files of a big inbox and logs how many
    it left; the next fires take the rest (queued files still waiting do not use up
    their budget). A small inbox is taken whole, as before."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    store = JobStore(make_db_engine(url))
    pipelines = {
        "nightly": Pipeline(
            name="nightly", prompt=PROMPT, schedule="0 2 * * *", inbox_mode="scheduled"
        )
    }
    small = settings.model_copy(update={"sweep_max_entries": 2})
    watcher = InboxWatcher(small, store, pipelines, held=["nightly"])
    inbox = small.folder("inbox", "nightly")
    inbox.mkdir(parents=True)
    for i in range(5):
        (inbox / f"doc{i}.txt").write_text(f"doc {i}")
    scheduler = Scheduler(small, store, pipelines, "a", watcher.enqueue_inbox)
    t0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    monkeypatch.setattr(logging.getLogger("edge_worker"), "propagate", True)
    taken: list[list[str | None]] = []
    with caplog.at_level(logging.INFO, logger="edge_worker"):
        for day in range(4):
            jobs = scheduler.fire("nightly", t0 + timedelta(days=day)) or []
            taken.append([getattr(store.get(j), "source_path", None) for j in jobs])
    assert taken == [
        ["nightly/doc0.txt", "nightly/doc1.txt"],
        ["nightly/doc2.txt", "nightly/doc3.txt"],
        ["nightly/doc4.txt"],
        [],
    ]
    cut = [r.fields for r in caplog.records if r.getMessage() == "inbox.truncated"]  # type: ignore[attr-defined]
    assert [(f["jobs"], f["left"]) for f in cut] == [(2, 3), (2, 1)]
    # Out of time: nothing is read, everything is left for the next fire.
    (inbox / "doc5.txt").write_text("doc 5")
    assert watcher.enqueue_inbox("nightly", Budget(max_entries=100, max_seconds=-1.0)) == []
    assert len(watcher.enqueue_inbox("nightly", Budget(max_entries=100, max_seconds=60))) == 1
