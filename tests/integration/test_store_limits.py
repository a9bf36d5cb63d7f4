"""`max_concurrent` with several claimers at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import time

import pytest
from sqlalchemy import func, select, text

from worker.queue.database import make_db_engine
from worker.queue.jobs import JobStore
from worker.queue.models import Job

pytestmark = pytest.mark.timeout(300)
CAP = 2


def _claim_capped(url: str, owner: str, out: multiprocessing.Queue[tuple[list[int], int]]) -> None:
    """Claim 3 at a time with the cap, hold each job briefly, count what runs, complete."""
    store = JobStore(make_db_engine(url))
    running_capped = select(func.count()).where(Job.status == "running", Job.pipeline == "capped")
    mine: list[int] = []
    most = 0
    idle = 0
    while idle < 20:
        jobs = store.claim(owner, 3, 60, limits={"capped": CAP})
        if not jobs:
            idle += 1
            time.sleep(0.01)
            continue
        idle = 0
        time.sleep(0.005)  # while held, another claimer's commit would show here
        with store.db.connect() as conn:
            most = max(most, conn.execute(running_capped).scalar_one())
        for job in jobs:
            assert store.complete(job.id, job.lease_token, owner, 0, 0)
            mine.append(job.id)
    out.put((mine, most))


def test_claimers_on_one_database_never_run_more_than_the_cap(
    job_store: JobStore, db_url: str
) -> None:
    with job_store.db.begin() as conn:
        conn.execute(
            text("INSERT INTO jobs (pipeline, input_text) VALUES (:p, :t)"),
            [{"p": "capped" if i % 2 else "free", "t": str(i)} for i in range(300)],
        )
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[tuple[list[int], int]] = ctx.Queue()
    procs = [ctx.Process(target=_claim_capped, args=(db_url, f"w{i}", out)) for i in range(3)]
    for proc in procs:
        proc.start()
    reports = [out.get(timeout=240) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    claimed = [job_id for mine, _most in reports for job_id in mine]
    assert sorted(claimed) == list(range(1, 301))  # every job exactly once
    most = max(most for _mine, most in reports)
    print(f"most capped jobs running at once: {most}; claims: {[len(m) for m, _ in reports]}")
    assert 1 <= most <= CAP


def test_the_cap_counts_jobs_running_on_other_daemons(job_store: JobStore) -> None:
    with job_store.db.begin() as conn:
        conn.execute(
            text("INSERT INTO jobs (pipeline, input_text) VALUES ('capped', :t)"),
            [{"t": str(i)} for i in range(5)],
        )
    assert len(job_store.claim("other-daemon", 1, 60)) == 1  # no cap known there
    assert len(job_store.claim("me", 5, 60, limits={"capped": 3})) == 2
    assert job_store.claim("me", 5, 60, limits={"capped": 3}) == []
