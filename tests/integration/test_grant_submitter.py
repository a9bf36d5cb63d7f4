"""`edge-worker db grant-submitter` on a real PostgreSQL: the role can submit and read
the outcomes of its own jobs, and nothing else: not the daemon's keys, not a priority
above 0, not another role's rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, ProgrammingError
from typer.testing import CliRunner

from tests.conftest import run_sql
from worker.cli.app import app
from worker.queue.database import make_db_engine
from worker.queue.migrate import upgrade


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
        "VALUES ('summarize', 'hello', -5, 'k1') RETURNING id",
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
    rows = run_sql(
        pg_url, f"SELECT source, source_path, status, submitted_by FROM jobs WHERE id = {job_id}"
    )
    assert [tuple(r) for r in rows] == [("table", None, "queued", role)]


def test_a_submitter_cannot_touch_the_claim_locks_of_capped_pipelines(
    pg_url: str, role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A role that could lock a row here could stop a capped pipeline's claims for good.
    monkeypatch.setenv("EDGE_WORKER_DATABASE_URL", pg_url)
    # Even where new tables are everyone's by default (the migration revokes PUBLIC's),
    # and for a role that was given more (grant-submitter revokes it).
    run_sql(pg_url, "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO PUBLIC")
    upgrade(pg_url)
    run_sql(pg_url, "INSERT INTO pipeline_claim_locks (pipeline) VALUES ('capped')")
    run_sql(pg_url, f'CREATE ROLE "{role}" NOLOGIN')
    run_sql(pg_url, f'GRANT ALL ON pipeline_claim_locks TO "{role}"')
    result = CliRunner().invoke(app, ["db", "grant-submitter", role])
    assert result.exit_code == 0, result.output
    assert "GRANT" not in "".join(
        line for line in result.output.splitlines() if "pipeline_claim_locks" in line
    )
    for who in (role, "public"):
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES"):
            ((allowed,),) = run_sql(
                pg_url,
                "SELECT has_table_privilege(:r, 'pipeline_claim_locks', :p)",
                r=who,
                p=privilege,
            )
            assert not allowed, (who, privilege)
    denied = [
        "SELECT pipeline FROM pipeline_claim_locks FOR UPDATE",
        "SELECT pipeline FROM pipeline_claim_locks FOR KEY SHARE",
        "INSERT INTO pipeline_claim_locks (pipeline) VALUES ('other')",
        "DELETE FROM pipeline_claim_locks",
        "LOCK TABLE pipeline_claim_locks IN ACCESS EXCLUSIVE MODE",
    ]
    for sql in denied:
        with pytest.raises(ProgrammingError, match="permission denied"):
            as_role(pg_url, role, sql)


@pytest.fixture
def second_role(pg_url: str) -> Iterator[str]:
    name = f"ew_other_{uuid.uuid4().hex[:8]}"
    yield name
    run_sql(pg_url, f'DROP OWNED BY "{name}"; DROP ROLE IF EXISTS "{name}"')


def _insert(url: str, role: str, key: str, priority: int = 0) -> list[tuple[object, ...]]:
    return as_role(
        url,
        role,
        "INSERT INTO jobs (pipeline, input_text, priority, idempotency_key) "
        f"VALUES ('summarize', 'x', {priority}, '{key}') RETURNING id",
    )


def test_a_submitter_sees_only_its_own_rows_and_cannot_forge_keys_or_jump_the_queue(
    pg_url: str, role: str, second_role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_WORKER_DATABASE_URL", pg_url)
    for name in (role, second_role):
        assert CliRunner().invoke(app, ["db", "grant-submitter", name]).exit_code == 0
    # The daemon's rows (a file job, a child line) and the other role's row.
    run_sql(
        pg_url,
        "INSERT INTO jobs (pipeline, source, source_path, idempotency_key) "
        "VALUES ('summarize', 'file', 'summarize/victim.txt', 'file:summarize/victim.txt:1:2:ab')",
    )
    ((theirs,),) = _insert(pg_url, second_role, "theirs")
    ((mine,),) = _insert(pg_url, role, "mine", priority=-1)

    assert as_role(pg_url, role, "SELECT id, idempotency_key FROM jobs") == [(mine, "mine")]
    assert as_role(pg_url, second_role, "SELECT id FROM jobs") == [(theirs,)]
    assert as_role(pg_url, role, f"SELECT status FROM jobs WHERE id = {theirs}") == []

    for key in ("file:summarize/victim.txt:1:2:ab", "sweep:s:/x:ab", f"child:{theirs}:1"):
        with pytest.raises(IntegrityError, match="reserved for the daemon"):
            _insert(pg_url, role, key)
    with pytest.raises(ProgrammingError, match="a submitter may set 0 or lower"):
        _insert(pg_url, role, "urgent", priority=1)
    # Keys that merely look alike are the submitter's own.
    _insert(pg_url, role, "File:summarize/x")
    _insert(pg_url, role, " file:x")
    # The table's owner (the daemon) still sees and may prioritise everything.
    assert len(run_sql(pg_url, "SELECT id FROM jobs")) == 5
    run_sql(pg_url, f"UPDATE jobs SET priority = 9 WHERE id = {mine}")


def test_grant_submitter_refuses_a_role_that_bypasses_row_security(
    pg_url: str, role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_WORKER_DATABASE_URL", pg_url)
    run_sql(pg_url, f'CREATE ROLE "{role}" NOLOGIN BYPASSRLS')
    result = CliRunner().invoke(app, ["db", "grant-submitter", role])
    assert result.exit_code == 2
    assert "would read every job" in result.output


def test_grant_submitter_on_sqlite_says_it_needs_postgresql(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_WORKER_DATABASE_URL", f"sqlite:///{tmp_path}/jobs.db")
    result = CliRunner().invoke(app, ["db", "grant-submitter", "x"])
    assert result.exit_code == 2
    assert "needs PostgreSQL" in result.output
