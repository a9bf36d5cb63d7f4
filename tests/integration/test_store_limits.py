"""`max_concurrent` with several claimers at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time

import pytest
from sqlalchemy import func, select, text

from tests.conftest import run_sql
from worker.queue import claims
from worker.queue.database import make_db_engine
from worker.queue.jobs import JobStore
from worker.queue.migrate import upgrade
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


def _capped_and_free(url: str) -> None:
    run_sql(
        url,
        "INSERT INTO jobs (pipeline, input_text) VALUES "
        "('capped', 'c1'), ('capped', 'c2'), ('free', 'f1')",
    )


def test_a_held_claim_lock_skips_the_capped_pipeline_without_waiting(pg_url: str) -> None:
    upgrade(pg_url)
    store = JobStore(make_db_engine(pg_url))
    _capped_and_free(pg_url)
    run_sql(pg_url, "INSERT INTO pipeline_claim_locks (pipeline) VALUES ('capped')")
    holder = make_db_engine(pg_url).connect()
    try:
        # Another claimer (or a stuck one) in the middle of its capped claim.
        holder.execute(
            text("SELECT pipeline FROM pipeline_claim_locks WHERE pipeline = 'capped' FOR UPDATE")
        )
        started = time.monotonic()
        claimed = store.claim("me", 5, 60, limits={"capped": 2})
        assert time.monotonic() - started < 5  # skipped, not waited for (lock_timeout: 15)
        assert [job.pipeline for job in claimed] == ["free"]
        holder.rollback()
        again = store.claim("me", 5, 60, limits={"capped": 2})
        assert sorted(job.pipeline for job in again) == ["capped", "capped"]
    finally:
        holder.close()


def test_a_new_capped_pipeline_gets_its_lock_row_in_the_claim(pg_url: str) -> None:
    upgrade(pg_url)
    store = JobStore(make_db_engine(pg_url))
    _capped_and_free(pg_url)
    assert len(store.claim("me", 5, 60, limits={"capped": 1, "other": 1})) == 2
    rows = run_sql(pg_url, "SELECT pipeline FROM pipeline_claim_locks ORDER BY pipeline")
    assert [row[0] for row in rows] == ["capped", "other"]


def test_any_role_holding_the_old_advisory_key_blocks_nothing(pg_url: str) -> None:
    upgrade(pg_url)
    store = JobStore(make_db_engine(pg_url))
    _capped_and_free(pg_url)
    # The key capped claims used to take (pg_try_advisory_xact_lock): any role that can
    # connect may hold it forever.
    digest = hashlib.sha256(b"edge-worker:max_concurrent:capped").digest()
    old_key = int.from_bytes(digest[:8], "big", signed=True)
    squatter = make_db_engine(pg_url).connect()
    try:
        squatter.execute(text("SELECT pg_advisory_lock(:k)"), {"k": old_key})
        squatter.commit()
        claimed = store.claim("me", 5, 60, limits={"capped": 2})
        assert sorted(job.pipeline for job in claimed) == ["capped", "capped", "free"]
    finally:
        squatter.close()


def test_a_capped_pipeline_busy_for_many_rounds_is_logged_once(
    pg_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrade(pg_url)
    store = JobStore(make_db_engine(pg_url))
    _capped_and_free(pg_url)
    monkeypatch.setattr(claims, "BUSY_ROUNDS_WARNING", 3)
    monkeypatch.setattr(logging.getLogger("edge_worker"), "propagate", True)
    run_sql(pg_url, "INSERT INTO pipeline_claim_locks (pipeline) VALUES ('capped')")
    holder = make_db_engine(pg_url).connect()

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "claim.pipeline_lock_busy"]

    try:
        holder.execute(text("SELECT * FROM pipeline_claim_locks FOR UPDATE"))
        with caplog.at_level(logging.INFO, logger="edge_worker"):
            for _ in range(2):
                store.claim("me", 1, 60, limits={"capped": 2})
            assert warnings() == []
            for _ in range(5):
                store.claim("me", 1, 60, limits={"capped": 2})
            (warned,) = warnings()  # once, not every round after the third
            assert warned.levelno == logging.WARNING
            assert warned.fields == {"pipeline": "capped", "rounds": 3}  # type: ignore[attr-defined]
            holder.rollback()  # free again: the count starts over
            assert store.claim("me", 1, 60, limits={"capped": 2}) != []
            holder.execute(text("SELECT * FROM pipeline_claim_locks FOR UPDATE"))
            for _ in range(3):
                store.claim("me", 1, 60, limits={"capped": 2})
            assert len(warnings()) == 2
    finally:
        holder.close()
