"""The retention SQL on SQLite and PostgreSQL: what goes, what stays, in chunks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from tests.clock import frozen
from worker.queue import housekeeping
from worker.queue.fires import FireStore
from worker.queue.housekeeping import HousekeepingStore
from worker.queue.jobs import JobStore, NewJob, utcnow
from worker.queue.models import Job, ScheduleFire, Worker

pytestmark = pytest.mark.timeout(120)


def test_old_final_jobs_idle_daemons_and_empty_fires_go(
    job_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(housekeeping, "CHUNK", 3)  # several chunks
    now = utcnow()
    old = now - timedelta(days=40)
    ids = [job_store.enqueue(NewJob("p", str(i))) for i in range(8)]
    with job_store.db.begin() as conn:
        conn.execute(
            update(Job).where(Job.id.in_(ids[:6])).values(status="failed", finished_at=old)
        )
        conn.execute(
            update(Job).where(Job.id == ids[6]).values(status="succeeded", finished_at=now)
        )
    then = JobStore(job_store.db, clock=frozen(old))
    for n in range(7):  # seven restarts
        then.register_worker(f"w{n}", "h", n, "m", 1)
        then.worker_heartbeat(f"w{n}", state="stopped")
    with job_store.db.begin() as conn:  # heartbeats are on the database's clock: age them
        stopped = [f"w{n}" for n in range(7)]
        conn.execute(update(Worker).where(Worker.id.in_(stopped)).values(heartbeat_at=old))
    job_store.register_worker("live", "h", 99, "m", 1)
    fires = FireStore(job_store.db, clock=frozen(old))
    for minute in range(5):
        fire = fires.record("s", old + timedelta(minutes=minute), "w0", False)
        assert fire is not None
        fires.link(fire, [])

    store = HousekeepingStore(job_store.db)
    cutoff = now - timedelta(days=30)
    assert store.count_expired_jobs(cutoff) == 6
    expired = store.expired_jobs(cutoff, limit=100)
    assert [j.id for j in expired] == ids[:6]
    assert store.delete_jobs([j.id for j in expired], cutoff) == 6
    assert store.count_stale_workers(now - timedelta(days=1), cutoff) == 7
    assert store.delete_stale_workers(now - timedelta(days=1), cutoff) == 7
    assert store.count_empty_fires(now - timedelta(days=1)) == 4
    assert store.delete_empty_fires(now - timedelta(days=1)) == 4
    with job_store.db.connect() as conn:
        assert sorted(conn.execute(select(Job.id)).scalars()) == ids[6:]
        assert list(conn.execute(select(Worker.id)).scalars()) == ["live"]
        (kept,) = conn.execute(select(ScheduleFire.fire_time)).scalars()
    assert kept == old + timedelta(minutes=4)  # the newest fire of the pipeline
