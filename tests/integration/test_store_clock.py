"""Leases on the database's clock (PostgreSQL: hosts disagree about the time), and jobs
that crashed the worker too often running alone."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from tests.clock import expire_leases
from worker.queue.database import make_db_engine
from worker.queue.jobs import JobStore, NewJob, offset_clock
from worker.queue.migrate import upgrade
from worker.queue.models import Job

AHEAD = 90.0


def _lease_seconds_left(store: JobStore, job_id: int) -> float:
    """Seconds until the job's lease ends, on the database's clock."""
    with store.db.connect() as conn:
        ends, now = conn.execute(
            select(Job.lease_expires_at, func.now()).where(Job.id == job_id)
        ).one()
    assert ends is not None
    return float((ends - now).total_seconds())


def test_a_host_whose_clock_is_ahead_never_takes_live_leases_on_postgresql(
    pg_url: str,
) -> None:
    upgrade(pg_url)
    honest = JobStore(make_db_engine(pg_url))
    ahead = JobStore(make_db_engine(pg_url), clock=offset_clock(AHEAD))
    behind = JobStore(make_db_engine(pg_url), clock=offset_clock(-AHEAD))
    first = honest.enqueue(NewJob("p", "live"))
    (job,) = honest.claim("honest", 1, lease_seconds=30)
    assert job.id == first
    # 90 s ahead, the 30 s lease looks expired on the host's clock: not on the database's.
    assert ahead.recover_expired(stale_after=30) == []
    assert honest.heartbeat(job.id, job.lease_token, 30)
    assert _lease_seconds_left(honest, job.id) < 31

    # A host's heartbeat and claim measure the lease from the database's time too.
    ahead.enqueue(NewJob("p", "second"))
    (theirs,) = ahead.claim("ahead", 1, lease_seconds=30)
    assert 25 < _lease_seconds_left(ahead, theirs.id) < 31
    assert ahead.heartbeat(theirs.id, theirs.lease_token, 30)
    assert _lease_seconds_left(ahead, theirs.id) < 31

    # A retry 60 s out is not due for a host 90 s ahead; a new job is due for one behind.
    retry_at = honest.clock() + timedelta(seconds=60)
    assert honest.fail(job.id, job.lease_token, "try later", retry_at)
    assert ahead.claim("ahead", 5, lease_seconds=30) == []
    assert not ahead.has_ready()
    behind.enqueue(NewJob("p", "fresh"))
    assert [behind.claimed_input(c.id) for c in behind.claim("behind", 5, lease_seconds=30)] == [
        "fresh"
    ]

    row = honest.get(job.id)
    assert row is not None and row.crashes == 0 and row.status == "queued"


def test_solo_claims_take_one_job_and_plain_claims_leave_them(job_store: JobStore) -> None:
    crashed = [job_store.enqueue(NewJob("p", f"crashed {i}")) for i in range(2)]
    job_store.enqueue(NewJob("p", "fresh"))
    with job_store.db.begin() as conn:
        conn.execute(update(Job).where(Job.id.in_(crashed)).values(crashes=3))
    assert job_store.solo_waiting(3)
    assert not job_store.solo_waiting(3, exclude_pipelines=["p"])
    assert not job_store.solo_waiting(4)
    (plain,) = job_store.claim("w", 5, lease_seconds=30, max_crashes=3)
    assert job_store.claimed_input(plain.id) == "fresh"
    (alone,) = job_store.claim("w", 5, lease_seconds=30, max_crashes=3, solo=True)
    assert alone.id == crashed[0]
    # Without max_crashes (an operator's view of the queue) every job is claimable.
    (other,) = job_store.claim("w", 5, lease_seconds=30)
    assert other.id == crashed[1]


def test_a_crash_beside_others_only_requeues(job_store: JobStore) -> None:
    job_id = job_store.enqueue(NewJob("p", "x"))
    assert job_store.claim("w", 1, lease_seconds=30, max_crashes=1)
    assert expire_leases(job_store) == 1
    (recovered,) = job_store.recover_expired(stale_after=30)
    assert (recovered.id, recovered.status) == (job_id, "queued")
    job = job_store.get(recovered.id)
    assert job is not None and job.crashes == 1 and not job.claimed_alone
