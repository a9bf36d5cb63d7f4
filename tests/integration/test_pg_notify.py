"""Migration 0002's NOTIFY triggers and the listener, on a real PostgreSQL server."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory

from tests.conftest import run_sql
from worker.queue.migrate import alembic_config, upgrade
from worker.sources.pg_listen import (
    BACKOFF_MAX,
    BACKOFF_START,
    CHANNEL,
    libpq_conninfo,
    listener_for,
    next_backoff,
)

pytestmark = pytest.mark.timeout(60)


def triggers(url: str) -> list[str]:
    sql = (
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
        "AND tgrelid = 'jobs'::regclass AND tgname LIKE 'jobs_notify%' ORDER BY tgname"
    )
    return [r[0] for r in run_sql(url, sql)]


def payloads(listener: psycopg.Connection[Any], wait: float = 2.0) -> list[str]:
    """Notifications that arrive within `wait` seconds."""
    return [n.payload for n in listener.notifies(timeout=wait)]


def test_backoff_doubles_up_to_a_ceiling() -> None:
    delays = [BACKOFF_START]
    for _ in range(10):
        delays.append(next_backoff(delays[-1]))
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays[-1] == BACKOFF_MAX
    assert next_backoff(0.0) == BACKOFF_START


def test_conninfo_drops_the_sqlalchemy_driver_and_keeps_the_password() -> None:
    assert libpq_conninfo("postgresql+psycopg://u:p%40ss@db:5433/jobs") == (
        "postgresql://u:p%40ss@db:5433/jobs"
    )


def test_sqlite_gets_no_listener(tmp_path: Path) -> None:
    assert listener_for(f"sqlite:///{tmp_path / 'jobs.db'}", threading.Event()) is None


def test_sqlite_migrates_without_notify_triggers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert run_sql(url, "SELECT version_num FROM alembic_version") == [(head,)]
    # Only the size ceiling (0006) and the reserved-key guards (0007): nothing notifies.
    names = run_sql(url, "SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY name")
    assert [n for (n,) in names] == [
        "jobs_input_text_size_insert",
        "jobs_input_text_size_update",
        "jobs_reserved_keys_insert",
        "jobs_reserved_keys_update",
    ]


def test_inserts_and_requeues_notify_and_downgrade_removes_the_triggers(pg_url: str) -> None:
    from alembic import command

    upgrade(pg_url)
    assert triggers(pg_url) == ["jobs_notify_insert", "jobs_notify_requeue"]
    with psycopg.connect(libpq_conninfo(pg_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        # A bulk insert sends one notification per pipeline (PostgreSQL folds duplicates).
        run_sql(
            pg_url,
            "INSERT INTO jobs (pipeline, input_text) SELECT 'a', 'x' FROM generate_series(1, 5)",
        )
        run_sql(pg_url, "INSERT INTO jobs (pipeline, input_text) VALUES ('b', 'y')")
        assert payloads(listener) == ["a", "b"]
        # Other updates are silent; going back to queued (retry, release, recovery) is not.
        run_sql(pg_url, "UPDATE jobs SET status = 'running' WHERE pipeline = 'b'")
        run_sql(pg_url, "UPDATE jobs SET attempts = 1 WHERE pipeline = 'b'")
        assert payloads(listener, wait=0.5) == []
        run_sql(pg_url, "UPDATE jobs SET status = 'queued' WHERE pipeline = 'b'")
        assert payloads(listener) == ["b"]

        command.downgrade(alembic_config(pg_url), "0001")
        assert triggers(pg_url) == []
        assert run_sql(
            pg_url, "SELECT count(*) FROM pg_proc WHERE proname = 'edge_worker_notify_job'"
        ) == [(0,)]
        run_sql(pg_url, "INSERT INTO jobs (pipeline, input_text) VALUES ('c', 'z')")
        assert payloads(listener, wait=0.5) == []

        upgrade(pg_url)  # and back up again
        assert triggers(pg_url) == ["jobs_notify_insert", "jobs_notify_requeue"]


def test_listener_wakes_on_insert_and_reconnects_after_the_server_drops_it(pg_url: str) -> None:
    upgrade(pg_url)
    wake = threading.Event()
    listener = listener_for(pg_url, wake)
    assert listener is not None
    listener.start()
    try:
        assert wake.wait(10), "no wake-up on connect"  # the catch-up wake-up
        wake.clear()
        run_sql(pg_url, "INSERT INTO jobs (pipeline, input_text) VALUES ('p', 'x')")
        assert wake.wait(5)
        assert listener.notifications == 1
        wake.clear()

        dropped = run_sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'edge-worker-listen' "
            "AND datname = current_database()",
        )
        assert dropped == [(True,)]
        assert wake.wait(15), "no wake-up after reconnecting"
        wake.clear()
        run_sql(pg_url, "INSERT INTO jobs (pipeline, input_text) VALUES ('p', 'y')")
        assert wake.wait(5)
        assert listener.notifications == 2
    finally:
        listener.stop()
