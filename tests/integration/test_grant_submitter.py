"""`edge-worker db grant-submitter` on a real PostgreSQL: the role can submit and read
outcomes, and nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from typer.testing import CliRunner

from tests.conftest import run_sql
from worker.cli.app import app
from worker.queue.database import make_db_engine


@pytest.fixture
def role(pg_url: str) -> Iterator[str]:
    name = f"ew submit {uuid.uuid4().hex[:8]}"  # a space: the name must be quoted
    yield name
    quoted = '"' + name + '"'
    run_sql(pg_url, f"DROP OWNED BY {quoted}; DROP ROLE IF EXISTS {quoted}")


def as_role(url: str, role: str, sql: str) -> list[tuple[object, ...]]:
    engine = make_db_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'SET ROLE "{role}"'))
            result = conn.execute(text(sql))
            return [tuple(r) for r in result.all()] if result.returns_rows else []
    finally:
        engine.dispose()


def test_a_submitter_inserts_and_reads_outcomes_but_cannot_touch_paths_or_states(
    pg_url: str, role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_WORKER_DATABASE_URL", pg_url)
    result = CliRunner().invoke(app, ["db", "grant-submitter", role])
    assert result.exit_code == 0, result.output
    assert "GRANT INSERT (pipeline, input_text, priority, idempotency_key)" in result.output
    again = CliRunner().invoke(app, ["db", "grant-submitter", role])  # idempotent
    assert again.exit_code == 0, again.output

    ((job_id,),) = as_role(
        pg_url,
        role,
        "INSERT INTO jobs (pipeline, input_text, priority, idempotency_key) "
        "VALUES ('summarize', 'hello', 5, 'k1') RETURNING id",
    )
    assert as_role(pg_url, role, f"SELECT status, result_text FROM jobs WHERE id = {job_id}") == [
        ("queued", None)
    ]
    denied = [
        "INSERT INTO jobs (pipeline, source, source_path) "
        "VALUES ('summarize', 'file', 'summarize/../../../victim/secret.txt')",
        "INSERT INTO jobs (pipeline, source) VALUES ('summarize', 'sweep')",
        f"UPDATE jobs SET status = 'failed' WHERE id = {job_id}",
        f"UPDATE jobs SET archived_path = '/etc/passwd' WHERE id = {job_id}",
        f"DELETE FROM jobs WHERE id = {job_id}",
        "SELECT input_text FROM jobs",
        "SELECT lease_token FROM jobs",
    ]
    for sql in denied:
        with pytest.raises(ProgrammingError, match="permission denied"):
            as_role(pg_url, role, sql)
    rows = run_sql(pg_url, f"SELECT source, source_path, status FROM jobs WHERE id = {job_id}")
    assert [tuple(r) for r in rows] == [("table", None, "queued")]


def test_grant_submitter_on_sqlite_says_it_needs_postgresql(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_WORKER_DATABASE_URL", f"sqlite:///{tmp_path}/jobs.db")
    result = CliRunner().invoke(app, ["db", "grant-submitter", "x"])
    assert result.exit_code == 2
    assert "needs PostgreSQL" in result.output
