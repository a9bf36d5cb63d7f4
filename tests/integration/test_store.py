"""The job store on real databases: SQLite, and PostgreSQL when EDGE_WORKER_TEST_PG_URL is set."""

from __future__ import annotations

import multiprocessing

import pytest
from sqlalchemy import inspect, text

from tests.clock import expire_leases
from worker.queue.database import make_db_engine
from worker.queue.jobs import JobStore, NewJob
from worker.queue.migrate import check, upgrade


def test_migrations_build_an_empty_database_without_drift(db_url: str) -> None:
    upgrade(db_url)
    engine = make_db_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert {"jobs", "workers", "alembic_version"} <= tables
    check(db_url)  # raises if models and migrations disagree (alembic check)


def test_a_plain_sql_insert_is_enough(job_store: JobStore) -> None:
    with job_store.db.begin() as conn:
        conn.execute(text("INSERT INTO jobs (pipeline, input_text) VALUES ('summarize', 'hi')"))
    (job,) = job_store.list_jobs()
    assert (job.status, job.priority, job.attempts, job.source) == ("queued", 0, 0, "table")
    assert job.created_at is not None and job.run_after is not None
    claimed = job_store.claim("w1", 5, lease_seconds=30)
    assert [job_store.claimed_input(c.id) for c in claimed] == ["hi"]
    assert [c.input_bytes for c in claimed] == [2]


def test_enqueue_is_idempotent_by_key(job_store: JobStore) -> None:
    first = job_store.enqueue(NewJob("p", "x", idempotency_key="k"))
    again = job_store.enqueue(NewJob("p", "x", idempotency_key="k"))
    assert first is not None and again is None
    assert len(job_store.list_jobs()) == 1


def test_claim_order_priority_then_age(job_store: JobStore) -> None:
    low = job_store.enqueue(NewJob("p", "low"))
    high = job_store.enqueue(NewJob("p", "high", priority=5))
    claimed = job_store.claim("w", 2, 30)
    assert [c.id for c in claimed] == [high, low]


def test_only_the_lease_holder_can_finish_a_job(job_store: JobStore) -> None:
    job_id = job_store.enqueue(NewJob("p", "x"))
    assert job_id is not None
    (job,) = job_store.claim("w1", 1, 30)
    assert not job_store.complete(job.id, "wrong-token", "r", 1, 1)
    assert job_store.complete(job.id, job.lease_token, "r", 3, 4)
    assert not job_store.complete(job.id, job.lease_token, "again", 1, 1)  # already done
    done = job_store.get(job_id)
    assert done is not None
    assert (done.status, done.result_text, done.prompt_tokens, done.completion_tokens) == (
        "succeeded",
        "r",
        3,
        4,
    )
    assert done.finished_at is not None and done.lease_token is None


def test_the_database_refuses_a_row_text_over_its_ceiling(job_store: JobStore) -> None:
    huge = "x" * (64 * 1024 * 1024 + 1)
    with pytest.raises(Exception, match="input_text"), job_store.db.begin() as conn:
        conn.execute(text("INSERT INTO jobs (pipeline, input_text) VALUES ('p', :t)"), {"t": huge})
    assert job_store.list_jobs() == []
    job_store.enqueue(NewJob("p", "x" * 1000))  # anything below it goes in


def test_expired_lease_returns_the_job_to_the_queue(job_store: JobStore) -> None:
    job_id = job_store.enqueue(NewJob("p", "x"))
    (job,) = job_store.claim("dead-worker", 1, lease_seconds=30)
    assert job_store.recover_expired(stale_after=30) == []  # lease still valid
    expire_leases(job_store)
    recovered = job_store.recover_expired(stale_after=30)
    assert [(r.id, r.status) for r in recovered] == [(job_id, "queued")]
    # the dead worker's token is useless now; a new claim gets the job
    assert not job_store.complete(job.id, job.lease_token, "late", 1, 1)
    (again,) = job_store.claim("w2", 1, 30)
    assert again.id == job_id and again.attempts == 2


def test_a_live_worker_keeps_its_jobs_past_their_lease(job_store: JobStore) -> None:
    # After a database outage every lease has expired, but a worker whose heartbeat is
    # fresh is alive: its jobs are not run again (their outcome may be on its way).
    job_store.register_worker("alive", "host", 1, "m", 1)
    job_store.enqueue(NewJob("p", "x"))
    (job,) = job_store.claim("alive", 1, lease_seconds=30)
    expire_leases(job_store)
    assert job_store.recover_expired(stale_after=30) == []
    assert job_store.heartbeat(job.id, job.lease_token, 30)  # renewed once it is back
    assert job_store.complete(job.id, job.lease_token, "once", 1, 1)
    # A stopped worker's jobs (or a silent one's) are recovered.
    job_store.enqueue(NewJob("p", "y"))
    (other,) = job_store.claim("alive", 1, lease_seconds=30)
    job_store.worker_heartbeat("alive", state="stopped")
    expire_leases(job_store)
    assert [r.id for r in job_store.recover_expired(stale_after=30)] == [other.id]


def test_a_job_that_kills_its_worker_runs_alone_then_is_dead(job_store: JobStore) -> None:
    poison = job_store.enqueue(NewJob("p", "poison"))
    neighbour = job_store.enqueue(NewJob("p", "neighbour"))
    assert len(job_store.claim("w", 5, lease_seconds=5, max_crashes=1)) == 2
    expire_leases(job_store)
    assert {r.status for r in job_store.recover_expired(stale_after=5)} == {"queued"}
    job = job_store.get(poison)  # type: ignore[arg-type]
    assert job is not None and (job.status, job.crashes) == ("queued", 1)
    assert job.error == (
        "the worker died with this job in flight (crash 1); it runs alone next, to find the cause"
    )
    # Suspects are taken only by a claim for a job to run alone, one at a time.
    assert job_store.claim("w", 5, lease_seconds=5, max_crashes=1) == []
    assert job_store.solo_waiting(1)
    (alone,) = job_store.claim("w", 5, lease_seconds=5, max_crashes=1, solo=True)
    assert alone.id == poison
    expire_leases(job_store)
    job_store.recover_expired(stale_after=5)
    job = job_store.get(poison)
    assert job is not None and job.status == "dead"
    assert job.error == "crashed the worker while running alone (crash 2): this input is the cause"
    # The neighbour, alone, finishes: it is never blamed.
    (cleared,) = job_store.claim("w", 5, lease_seconds=5, max_crashes=1, solo=True)
    assert cleared.id == neighbour
    assert job_store.complete(cleared.id, cleared.lease_token, "fine", 1, 1)
    assert not job_store.solo_waiting(1)


def test_the_jobs_of_a_process_that_died_are_requeued_at_once(job_store: JobStore) -> None:
    job_store.register_worker("previous", "host", 1, "m", 1)
    job_store.enqueue(NewJob("p", "x"))
    (job,) = job_store.claim("previous", 1, lease_seconds=600)  # its lease is far from over
    (recovered,) = job_store.requeue_suspects("previous")
    assert (recovered.id, recovered.status) == (job.id, "queued")
    row = job_store.get(job.id)
    assert row is not None and row.crashes == 1
    assert [w.state for w in job_store.list_workers()] == ["crashed"]


def test_release_does_not_count_the_attempt(job_store: JobStore) -> None:
    job_store.enqueue(NewJob("p", "x"))
    (job,) = job_store.claim("w", 1, 30)
    assert job_store.release(job.id, job.lease_token)
    (again,) = job_store.claim("w", 1, 30)
    assert again.attempts == 1


def test_cancel_makes_the_lease_holder_lose_the_job(job_store: JobStore) -> None:
    job_store.enqueue(NewJob("p", "x"))
    (job,) = job_store.claim("w", 1, 30)
    assert job_store.cancel(job.id)
    assert not job_store.heartbeat(job.id, job.lease_token, 30)
    assert not job_store.complete(job.id, job.lease_token, "r", 1, 1)
    assert job_store.retry(job.id)
    assert job_store.claim("w", 1, 30)


def _claim_all(url: str, owner: str, out: multiprocessing.Queue[tuple[list[int], int]]) -> None:
    store = JobStore(make_db_engine(url))
    mine: list[int] = []
    biggest = 0
    idle = 0
    while idle < 3:
        jobs = store.claim(owner, 3, 60)
        if not jobs:
            idle += 1
            continue
        idle = 0
        biggest = max(biggest, len(jobs))
        for job in jobs:
            assert store.complete(job.id, job.lease_token, owner, 0, 0)
            mine.append(job.id)
    out.put((mine, biggest))


def test_two_processes_never_claim_the_same_job(job_store: JobStore, db_url: str) -> None:
    total = 2000
    with job_store.db.begin() as conn:
        conn.execute(
            text("INSERT INTO jobs (pipeline, input_text) VALUES ('p', :t)"),
            [{"t": str(i)} for i in range(total)],
        )
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[tuple[list[int], int]] = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(db_url, f"w{i}", out)) for i in range(2)]
    for proc in procs:
        proc.start()
    reports = [out.get(timeout=240) for _ in procs]
    results = [mine for mine, _biggest in reports]
    assert max(biggest for _mine, biggest in reports) <= 3  # never more than asked for
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    claimed = [job_id for result in results for job_id in result]
    print(f"claims per process: {[len(r) for r in results]}")
    assert len(claimed) == total
    assert len(set(claimed)) == total
    assert all(len(r) > 0 for r in results), "both processes should have claimed work"
