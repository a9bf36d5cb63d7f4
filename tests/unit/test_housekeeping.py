"""Retention: `purge` (the daemon's daily loop and `jobs purge`) on a temp SQLite store
and data dir; rows are untrusted, so a row naming a file outside done/ or failed/ of
its own pipeline never gets that file deleted."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from tests.clock import frozen
from worker.cli.app import app
from worker.config import Settings
from worker.io.files import FileRef, content_digest, file_key
from worker.ops.housekeeping import Cutoffs, Housekeeping, cutoffs, purge
from worker.queue.fires import FireStore
from worker.queue.housekeeping import HousekeepingStore
from worker.queue.jobs import JobStore, NewBatch, NewChild, NewJob, utcnow
from worker.queue.models import Batch, Job, ScheduleFire, Worker

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=40)


def test_cutoffs() -> None:
    assert cutoffs(NOW, 30) == Cutoffs(
        jobs=NOW - timedelta(days=30),
        stopped_workers=NOW - timedelta(days=1),
        silent_workers=NOW - timedelta(days=30),
        empty_fires=NOW - timedelta(days=1),
    )
    # A retention shorter than a day is shorter for the idle history too.
    assert cutoffs(NOW, 0.5).empty_fires == NOW - timedelta(hours=12)


def finish(
    store: JobStore, text: str, when: datetime, status: str = "succeeded", **kw: object
) -> int:
    """A job of pipeline `p` made final at `when`."""
    job_id = store.enqueue(NewJob("p", text, **kw))  # type: ignore[arg-type]
    assert job_id is not None
    with store.db.begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(status=status, finished_at=when))
    return job_id


def archive(store: JobStore, job_id: int, path: Path, text: str = "x") -> Path:
    """The job becomes the file job of `path`'s version (its `file:` key, as the watcher
    makes it), archived at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    info = path.stat()
    ref = FileRef(path.parent.name, path.name)
    key = file_key(ref, info.st_size, info.st_mtime_ns, content_digest(path.read_bytes()))
    with store.db.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(source="file", source_path=ref.source_path, idempotency_key=key)
        )
    store.set_archived_path(job_id, str(path))
    return path


def error_file(path: Path, job_id: int) -> Path:
    """The `.error.json` the daemon writes beside a failed original."""
    reason = path.with_name(path.name + ".error.json")
    reason.write_text(json.dumps({"job_id": job_id, "error": "x"}))
    return reason


class World:
    """Jobs, files, daemons and fires of every kind purge must tell apart."""

    def __init__(self, settings: Settings, store: JobStore, outside: Path) -> None:
        done = settings.folder("done", "p")
        failed = settings.folder("failed", "p")
        self.old_done = finish(store, "old done", OLD)
        self.done_file = archive(store, self.old_done, done / "a.txt")
        self.old_failed = finish(store, "old failed", OLD, status="failed")
        self.failed_file = archive(store, self.old_failed, failed / "b.txt")
        self.error_file = error_file(self.failed_file, self.old_failed)
        # Rows pointing outside done/ and failed/ of their own pipeline.
        self.victim = outside / "victim.txt"
        self.victim.parent.mkdir(parents=True, exist_ok=True)
        self.victim.write_text("precious")
        self.pointing_out = finish(store, "points outside", OLD, status="dead")
        store.set_archived_path(self.pointing_out, str(self.victim))
        self.climbing = finish(store, "climbs", OLD, status="failed")
        store.set_archived_path(
            self.climbing, str(done / ".." / ".." / ".." / "outside" / "victim.txt")
        )
        self.linked = finish(store, "symlink", OLD)
        self.link = done / "link.txt"
        self.link.symlink_to(self.victim)
        store.set_archived_path(self.linked, str(self.link))
        self.other_pipeline = store.enqueue(NewJob("../outside", "sneaky"))
        with store.db.begin() as conn:
            conn.execute(
                update(Job)
                .where(Job.id == self.other_pipeline)
                .values(status="failed", finished_at=OLD, archived_path=str(self.victim))
            )
        self.young = finish(store, "young", NOW - timedelta(days=2))
        self.young_file = archive(store, self.young, done / "young.txt")
        # A waiting parent's old final child stays: the parent still gathers it.
        parent = store.enqueue(NewJob("p", source="file", source_path="p/lines.jsonl"))
        assert parent is not None
        self.parent = parent
        (claimed,) = store.claim("w", 1, 30, pipelines=["p"])
        assert claimed.id == parent
        assert store.expand(
            parent,
            claimed.lease_token,
            "p",
            "batch",
            [NewChild(1, "one")],
            NewBatch("batch_abc", "lines.jsonl", "/v1/completions", None, 1),
        )
        (child,) = store.children(parent)
        self.child = child.id
        self.queued = store.enqueue(NewJob("p", "still queued"))
        with store.db.begin() as conn:
            conn.execute(
                update(Job).where(Job.id == self.child).values(status="succeeded", finished_at=OLD)
            )

        old_store = JobStore(store.db, clock=frozen(OLD))
        old_store.register_worker("stopped-old", "h", 1, "m", 1)
        old_store.worker_heartbeat("stopped-old", state="stopped")
        old_store.register_worker("silent-old", "h", 2, "m", 1)  # killed: never said stopped
        recent = JobStore(store.db, clock=frozen(NOW - timedelta(hours=2)))
        recent.register_worker("stopped-recent", "h", 3, "m", 1)
        recent.worker_heartbeat("stopped-recent", state="stopped")
        JobStore(store.db, clock=frozen(NOW)).register_worker("running", "h", 4, "m", 1)

        fires = FireStore(store.db, clock=frozen(OLD))
        self.empty_old = fires.record("s", OLD, "w", False)
        full = fires.record("s", OLD + timedelta(minutes=1), "w", False)
        assert self.empty_old is not None and full is not None
        fires.link(self.empty_old, [])
        fires.link(full, [self.young])
        self.newest_empty = fires.record("s", OLD + timedelta(minutes=2), "w", False)

    def surviving_ids(self, store: JobStore) -> set[int]:
        return {job.id for job in store.list_jobs(limit=None)}


@pytest.fixture
def world(settings: Settings, store: JobStore, tmp_path: Path) -> World:
    return World(settings, store, tmp_path / "outside")


def test_purge_dry_run_says_what_would_go_and_deletes_nothing(
    settings: Settings, store: JobStore, world: World
) -> None:
    before = world.surviving_ids(store)
    report = purge(settings, HousekeepingStore(store.db), 30, dry_run=True, now=NOW)
    assert (report.jobs, report.files, report.workers, report.fires) == (6, 3, 2, 1)
    assert world.surviving_ids(store) == before
    assert world.done_file.exists() and world.failed_file.exists() and world.error_file.exists()
    assert "would delete 6 job(s), 3 archived file(s)" in report.describe(dry_run=True)


def test_purge_deletes_old_jobs_their_files_and_idle_history_only(
    settings: Settings, store: JobStore, world: World
) -> None:
    report = purge(settings, HousekeepingStore(store.db), 30, now=NOW)
    assert (report.jobs, report.files, report.workers, report.fires) == (6, 3, 2, 1)
    kept = world.surviving_ids(store)
    for gone in (
        world.old_done,
        world.old_failed,
        world.pointing_out,
        world.climbing,
        world.linked,
    ):
        assert gone not in kept
    assert world.other_pipeline not in kept
    assert {world.young, world.queued, world.parent, world.child} <= kept
    # files: the jobs' own, with the error file; never what a row merely names
    assert not world.done_file.exists()
    assert not world.failed_file.exists() and not world.error_file.exists()
    assert world.victim.read_text() == "precious"
    assert world.link.is_symlink()  # not a file the daemon archived: left alone
    assert world.young_file.exists()
    with store.db.connect() as conn:
        workers = set(conn.execute(select(Worker.id)).scalars())
        fires = set(conn.execute(select(ScheduleFire.id)).scalars())
        batches = set(conn.execute(select(Batch.id)).scalars())
    assert workers == {"stopped-recent", "running"}
    assert world.empty_old not in fires and world.newest_empty in fires and len(fires) == 2
    assert batches == {"batch_abc"}  # its parent is still waiting
    # A second run finds nothing more.
    again = purge(settings, HousekeepingStore(store.db), 30, now=NOW)
    assert (again.jobs, again.files, again.workers, again.fires) == (0, 0, 0, 0)


def test_a_job_retried_meanwhile_is_not_deleted(store: JobStore) -> None:
    job_id = finish(store, "x", OLD, status="failed")
    housekeeping = HousekeepingStore(store.db)
    (expired,) = housekeeping.expired_jobs(NOW - timedelta(days=30))
    assert store.retry(job_id)  # the operator was quicker
    assert housekeeping.delete_jobs([expired.id], NOW - timedelta(days=30)) == 0
    assert store.get(job_id) is not None


def test_batch_records_go_with_their_job(settings: Settings, store: JobStore) -> None:
    parent = store.enqueue(NewJob("p", source="file", source_path="p/b.jsonl"))
    assert parent is not None
    (claimed,) = store.claim("w", 1, 30)
    assert store.expand(
        parent,
        claimed.lease_token,
        "p",
        "batch",
        [],
        NewBatch("batch_x", "b.jsonl", "/v1/completions", None, 0),
    )
    with store.db.begin() as conn:
        conn.execute(update(Job).values(status="succeeded", finished_at=OLD))
    assert purge(settings, HousekeepingStore(store.db), 30, now=NOW).jobs == 1
    assert store.get_batch("batch_x") is None


def test_the_daily_loop_waits_first_then_purges_and_zero_days_keeps_all(
    settings: Settings, store: JobStore
) -> None:
    finish(store, "old", utcnow() - timedelta(days=40))
    loop = Housekeeping(settings, HousekeepingStore(store.db), first_delay=5)
    assert loop.step() == 5  # not during start-up
    assert store.list_jobs()  # nothing yet
    keep_all = Housekeeping(
        settings.model_copy(update={"retention_days": 0}), HousekeepingStore(store.db)
    )
    keep_all.step()
    assert keep_all.step() == 24 * 3600
    assert keep_all.last_report is None and store.list_jobs()
    assert settings.retention_days == 30  # the default
    assert loop.step() == 24 * 3600
    assert loop.last_report is not None and loop.last_report.jobs == 1
    assert store.list_jobs() == []


def test_jobs_purge_command(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_WORKER_DATA_DIR", str(settings.data_dir))
    monkeypatch.delenv("EDGE_WORKER_CONFIG", raising=False)
    file_path = archive(
        store,
        finish(store, "old", utcnow() - timedelta(days=10)),
        settings.folder("done", "p") / "f.txt",
    )
    young = finish(store, "young", utcnow() - timedelta(days=1))

    dry = CliRunner().invoke(app, ["jobs", "purge", "--older-than", "7", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would delete 1 job(s), 1 archived file(s)" in dry.stdout
    assert file_path.exists() and len(store.list_jobs()) == 2

    real = CliRunner().invoke(app, ["jobs", "purge", "--older-than", "7"])
    assert real.exit_code == 0, real.output
    assert "deleted 1 job(s), 1 archived file(s)" in real.stdout
    assert not file_path.exists()
    assert [j.id for j in store.list_jobs()] == [young]


def test_purge_leaves_a_file_that_is_not_the_jobs_own_version(
    settings: Settings, store: JobStore
) -> None:
    """A retried job's original went back to the inbox; the new version failed and was
    archived under the same name. The old row (had it kept its path) must not cost the
    new job its original or its error file."""
    failed = settings.folder("failed", "p")
    old = finish(store, "old", OLD, status="failed")
    path = archive(store, old, failed / "r.txt", "version one")
    # The new version's original and reason now lie at the same path.
    path.write_text("version two, same name")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    newer = finish(store, "new", NOW, status="failed")
    reason = error_file(path, newer)
    report = purge(settings, HousekeepingStore(store.db), 30, now=NOW)
    assert (report.jobs, report.files) == (1, 0)
    assert path.read_text() == "version two, same name" and reason.exists()


def test_a_retry_forgets_the_archived_path(store: JobStore, tmp_path: Path) -> None:
    job_id = finish(store, "x", OLD, status="failed")
    store.set_archived_path(job_id, str(tmp_path / "failed" / "x.txt"))
    assert store.retry(job_id)
    job = store.get(job_id)
    assert job is not None and job.archived_path is None
