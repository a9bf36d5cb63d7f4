"""`edge-worker db downgrade`: every migration undoes itself on a real database, and
the jobs survive a round trip (the rollback recipe in the README relies on both)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from typer.testing import CliRunner

from worker.cli.app import app
from worker.queue.database import make_db_engine
from worker.queue.migrate import MigrationError, check, current, downgrade, revisions, upgrade

# What each revision adds, so that its downgrade can be seen to take exactly that away.
ADDED_TABLES = {
    "0001": {"jobs", "workers"},
    "0002": set(),  # PostgreSQL NOTIFY triggers only
    "0003": {"schedule_fires", "schedule_fire_jobs"},
    "0005": {"batches"},
    "0006": set(),  # a column and SQLite triggers (the size ceiling)
    "0007": set(),  # a column, triggers, and PostgreSQL row security
    "0008": {"swept_files"},
    "0009": set(),  # columns only
    "0010": {"pipeline_claim_locks"},
    "0011": set(),  # a column only
}
ADDED_JOB_COLUMNS = {
    "0005": {"parent_id", "item_index"},
    "0006": {"claimed_alone"},
    "0007": {"submitted_by"},
    "0009": {"origin", "model"},
    "0011": {"input_owner"},
}


# The triggers each revision adds, per backend: a later downgrade must keep them (a
# SQLite table copied by batch mode silently loses its triggers).
ADDED_TRIGGERS = {
    "sqlite": {
        "0006": {"jobs_input_text_size_insert", "jobs_input_text_size_update"},
        "0007": {"jobs_reserved_keys_insert", "jobs_reserved_keys_update"},
    },
    "postgresql": {
        "0002": {"jobs_notify_insert", "jobs_notify_requeue"},
        "0007": {"jobs_guard"},
    },
}


def _expected_triggers(url: str, revision: str) -> set[str]:
    """The triggers of every revision up to `revision` ("base": none)."""
    added = ADDED_TRIGGERS["postgresql" if url.startswith("postgresql") else "sqlite"]
    if revision == "base":
        return set()
    return {name for rev, names in added.items() if rev <= revision for name in names}


def _tables(url: str) -> set[str]:
    engine = make_db_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _job_columns(url: str) -> set[str]:
    engine = make_db_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()


def _triggers(url: str) -> set[str]:
    engine = make_db_engine(url)
    try:
        if engine.dialect.name == "postgresql":
            sql = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(text(sql))}
    finally:
        engine.dispose()


def _job_inputs(url: str) -> list[str]:
    engine = make_db_engine(url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text("SELECT input_text FROM jobs ORDER BY id"))]
    finally:
        engine.dispose()


def test_the_revisions_are_one_line_and_known_to_the_table_above() -> None:
    assert revisions() == sorted(ADDED_TABLES)


def test_each_downgrade_removes_what_its_upgrade_added_and_keeps_the_jobs(db_url: str) -> None:
    upgrade(db_url)
    engine = make_db_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (pipeline, input_text) VALUES ('summarize', 'kept')"))
    engine.dispose()
    assert current(db_url) == revisions()[-1]
    assert _triggers(db_url) == _expected_triggers(db_url, revisions()[-1])

    newest_first = list(reversed(revisions()))
    for revision, below in zip(newest_first, [*newest_first[1:], "base"], strict=True):
        before_tables, before_columns = _tables(db_url), _job_columns(db_url)
        downgrade(db_url, below)
        assert current(db_url) == (None if below == "base" else below)
        assert _tables(db_url) == before_tables - ADDED_TABLES[revision]
        if below == "base":
            break
        assert _job_columns(db_url) == before_columns - ADDED_JOB_COLUMNS.get(revision, set())
        assert _job_inputs(db_url) == ["kept"], f"downgrade of {revision} lost the jobs"
        assert _triggers(db_url) == _expected_triggers(db_url, below), (
            f"downgrade of {revision} changed the triggers of the revisions below it"
        )

    assert _tables(db_url) == set()
    upgrade(db_url)
    check(db_url)  # the schema after the round trip is the one the models describe


def test_round_trip_to_the_previous_release_keeps_the_jobs(db_url: str) -> None:
    upgrade(db_url)
    engine = make_db_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (pipeline, input_text) VALUES ('p', 'a'), ('p', 'b')"))
    engine.dispose()
    downgrade(db_url, "0003")
    assert current(db_url) == "0003"
    upgrade(db_url)
    check(db_url)
    assert _job_inputs(db_url) == ["a", "b"]


def test_an_unknown_revision_is_refused_before_anything_changes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    with pytest.raises(MigrationError, match="unknown revision '0004'"):
        downgrade(url, "0004")
    assert current(url) == revisions()[-1]


def test_the_cli_downgrades_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_WORKER_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("EDGE_WORKER_DATABASE_URL", raising=False)
    monkeypatch.delenv("EDGE_WORKER_CONFIG", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    url = f"sqlite:///{(tmp_path / 'jobs.db').resolve()}"

    result = runner.invoke(app, ["db", "downgrade", "0003"])
    assert result.exit_code == 0, result.output
    assert "is at revision 0003" in result.output
    assert current(url) == "0003"
    shown = runner.invoke(app, ["db", "current"])
    assert "database revision: 0003" in shown.output
    assert f"this version ships: {', '.join(revisions())}" in shown.output

    refused = runner.invoke(app, ["db", "downgrade", "9999"])
    assert refused.exit_code == 2
    assert current(url) == "0003"


def test_a_database_at_head_is_not_migrated_again(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart on an up-to-date schema runs no migration, so it never waits on the
    migration lock (on PostgreSQL an advisory key any connected role could hold); a
    schema behind is still brought up."""
    from alembic import command
    from alembic.config import Config

    upgrade(db_url)
    calls: list[str] = []
    real = command.upgrade

    def counted(config: Config, revision: str) -> None:
        calls.append(revision)
        real(config, revision)

    monkeypatch.setattr(command, "upgrade", counted)
    upgrade(db_url)
    assert calls == []
    downgrade(db_url, revisions()[-2])
    upgrade(db_url)
    assert calls == ["head"] and current(db_url) == revisions()[-1]
