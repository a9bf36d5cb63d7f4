"""Database calls beat the calling thread's heartbeat: calls made one after another
through an outage are each a bounded wait, never one long silence the watchdog would
take for a hung thread."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from worker import liveness
from worker.queue import database
from worker.queue.database import DbTimeouts, make_db_engine
from worker.queue.jobs import JobStore, NewJob
from worker.queue.migrate import upgrade
from worker.queue.outage import DatabaseUnavailable

WAIT = 0.4  # each call's bound: SQLite's busy timeout, PostgreSQL's lock timeout
STALL = 0.6  # longer than one wait, shorter than two in a row


@contextmanager
def locked(url: str) -> Iterator[None]:
    """Another program holds the lock every call of the store needs."""
    if make_url(url).get_backend_name() == "sqlite":
        path = make_url(url).database
        assert path
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    engine = create_engine(url)
    try:
        with engine.connect() as conn, conn.begin() as tx:
            conn.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
            yield
            tx.rollback()
    finally:
        engine.dispose()


@pytest.mark.timeout(60)
def test_calls_in_a_row_through_an_outage_each_beat(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot whose input read fails and whose release then waits too (the runner's own
    order) stays alive: each call beats as it starts and as it fails."""
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", int(WAIT * 1000))
    upgrade(db_url)
    store = JobStore(make_db_engine(db_url, DbTimeouts(connect=5.0, statement=5.0, lock=WAIT)))
    job_id = store.enqueue(NewJob(pipeline="p", input_text="x"))
    assert job_id is not None
    calls: list[Callable[[], object]] = [
        lambda: store.claimed_input(job_id),
        lambda: store.release(job_id, "token"),
        lambda: store.heartbeat(job_id, "token", 60.0),
    ]
    heartbeat = liveness.Heartbeat("slot-0", STALL)
    heartbeat.busy()
    liveness.bind(heartbeat)
    try:
        with locked(db_url):
            started = time.monotonic()
            for call in calls:
                with pytest.raises(DatabaseUnavailable):
                    call()
                assert not heartbeat.stalled(), f"silent for {heartbeat.silent_for():.2f} s"
            # The calls did wait out their bound: together far longer than STALL.
            assert time.monotonic() - started >= len(calls) * WAIT * 0.9
    finally:
        liveness.bind(None)
        store.db.dispose()


@pytest.mark.timeout(60)
def test_calls_in_a_row_waiting_for_a_pooled_connection_each_beat(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pooled connection is taken (held by calls waiting out an outage): each call
    waits at most the pool's bound, and beats as it starts and as it gives up."""
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", int(WAIT * 1000))
    upgrade(db_url)
    engine = make_db_engine(
        db_url, DbTimeouts(connect=WAIT), pool_size=1, max_overflow=0, pool_timeout=WAIT
    )
    store = JobStore(engine)
    heartbeat = liveness.Heartbeat("slot-0", STALL)
    heartbeat.busy()
    liveness.bind(heartbeat)
    held = engine.connect()  # the pool's only connection
    try:
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(DatabaseUnavailable):
                store.claimed_input(1)
            assert not heartbeat.stalled(), f"silent for {heartbeat.silent_for():.2f} s"
        assert time.monotonic() - started >= 3 * WAIT * 0.9
    finally:
        held.close()
        liveness.bind(None)
        engine.dispose()


def test_a_statement_beats_as_it_starts(db_url: str) -> None:
    """Below the store: the engine's own events beat (a statement, a connection), so a
    wait inside one store call (a pooled connection, then a lock) is cut in two."""
    engine = make_db_engine(db_url)
    heartbeat = liveness.Heartbeat("slot-0", 60.0)
    liveness.bind(heartbeat)
    try:
        with engine.connect() as conn:
            for _ in range(2):
                heartbeat._beat_at -= 100  # as if silent for long
                conn.exec_driver_sql("SELECT 1")
                assert heartbeat.silent_for() < 5
    finally:
        liveness.bind(None)
        engine.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_a_database_in_memory_gets_no_pool_timeout(url: str) -> None:
    """One connection per thread: no pool to wait for, and no pool_timeout to pass."""
    engine = make_db_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        engine.dispose()
