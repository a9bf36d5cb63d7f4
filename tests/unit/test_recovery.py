"""The recovery sweep's waits: after its start and after an outage it recovers no lease
for one lease period, in which live daemons renew leases an outage held up."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.clock import expire_leases
from worker.config import Settings
from worker.queue.jobs import JobStore, NewJob, RecoveredJob
from worker.queue.outage import DatabaseUnavailable
from worker.run.recovery import RecoverySweep


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _orphan(store: JobStore) -> int:
    """A job held by a daemon with no heartbeat (it looks dead), its lease over."""
    job_id = store.enqueue(NewJob(pipeline="p", input_text="x"))
    assert job_id is not None
    (claimed,) = store.claim("gone", 1, 60)
    assert expire_leases(store) == 1
    return claimed.id


def _status(store: JobStore, job_id: int) -> str:
    job = store.get(job_id)
    assert job is not None
    return job.status


def test_no_lease_is_recovered_until_a_lease_period_after_the_start(
    settings: Settings, store: JobStore
) -> None:
    job_id = _orphan(store)
    clock = FakeMonotonic()
    wake = threading.Event()
    sweep = RecoverySweep(settings, store, wake, monotonic=clock)
    clock.now += 3600  # built long before it starts (a slow start): the wait is from start
    sweep.before_start()
    assert _status(store, job_id) == "running"
    clock.now += settings.lease_seconds - 1
    sweep.step()
    assert _status(store, job_id) == "running" and not wake.is_set()
    clock.now += 1
    sweep.step()
    assert _status(store, job_id) == "queued" and wake.is_set()


def test_after_an_outage_the_sweep_waits_a_lease_period_again(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeMonotonic()
    sweep = RecoverySweep(settings, store, threading.Event(), monotonic=clock)
    sweep.before_start()
    clock.now += settings.lease_seconds
    real = store.recover_expired

    def down(stale_after: float, max_solo: int = 1) -> list[RecoveredJob]:
        raise DatabaseUnavailable("connection refused")

    monkeypatch.setattr(store, "recover_expired", down)
    with pytest.raises(DatabaseUnavailable):
        sweep.step()
    monkeypatch.setattr(store, "recover_expired", real)
    job_id = _orphan(store)
    sweep.step()  # back: the grace starts now
    clock.now += settings.lease_seconds - 1
    sweep.step()
    assert _status(store, job_id) == "running"
    clock.now += 1
    sweep.step()
    assert _status(store, job_id) == "queued"


def test_a_zero_start_grace_recovers_at_once(settings: Settings, store: JobStore) -> None:
    job_id = _orphan(store)
    sweep = RecoverySweep(settings, store, threading.Event(), start_grace=0)
    sweep.before_start()
    assert _status(store, job_id) == "queued"


def test_stale_temps_go_from_per_submitter_and_swept_output_folders_too(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    outbox = settings.folder("outbox", "p")
    elsewhere = tmp_path / "elsewhere"
    for folder in (outbox / "1000", outbox / "2026-11" / "week-1", elsewhere):
        folder.mkdir(parents=True)
    (outbox / "2000").symlink_to(elsewhere, target_is_directory=True)
    stale = [
        outbox / ".a.txt.0a1b2c3d.tmp",
        outbox / "1000" / ".b.txt.0a1b2c3d.tmp",
        outbox / "2026-11" / "week-1" / ".c.txt.0a1b2c3d.tmp",  # a swept file's folders
    ]
    kept = [
        outbox / "1000" / ".fresh.txt.0a1b2c3d.tmp",  # may still be written
        outbox / "1000" / "b.txt.txt",  # an output
        elsewhere / ".d.txt.0a1b2c3d.tmp",  # behind a symlink
    ]
    for path in [*stale, *kept]:
        path.write_text("x")
    for path in [*stale, *kept[2:]]:
        os.utime(path, (1000, 1000))
    RecoverySweep(settings, store, threading.Event()).step()
    assert [path for path in [*stale, *kept] if path.exists()] == kept
