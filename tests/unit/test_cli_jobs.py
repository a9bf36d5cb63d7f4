"""The operator's commands through Typer's CliRunner on a temp SQLite database: exit
codes, `--json`, `submit --priority`, `jobs retry` by ids and by filter, export."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner, Result

from worker.cli.app import app
from worker.cli.jobs import EXPORT_KEYS, LIST_KEYS, SHOW_KEYS
from worker.config import Settings, load_settings
from worker.io.files import FileRef, FileVersion
from worker.queue.database import make_db_engine
from worker.queue.jobs import JobStore, NewJob, utcnow
from worker.queue.migrate import upgrade
from worker.queue.models import Job

PIPELINE = 'prompt = "Q: {{ input }}\\nA:"\n'


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """EDGE_WORKER_* pointing at a temp data dir and a pipelines folder with `echo`."""
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "echo.toml").write_text(PIPELINE)
    for name in list(os.environ):
        if name.startswith("EDGE_WORKER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EDGE_WORKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EDGE_WORKER_PIPELINES_DIR", str(pipelines))
    monkeypatch.setenv("COLUMNS", "200")
    return load_settings()


@pytest.fixture
def db(cli_env: Settings) -> JobStore:
    url = cli_env.resolved_database_url
    upgrade(url)
    return JobStore(make_db_engine(url))


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def finished(store: JobStore, pipeline: str, text: str, status: str = "succeeded") -> int:
    """A table job taken to `status` (succeeded, failed or dead) through the store."""
    job_id = store.enqueue(NewJob(pipeline, text))
    assert job_id is not None
    (job,) = store.claim("w", 1, 30, pipelines=[pipeline])
    assert job.id == job_id
    if status == "succeeded":
        assert store.complete(job.id, job.lease_token, f"result of {text}", 3, 4)
    else:
        assert store.fail(job.id, job.lease_token, "boom", None, dead=status == "dead")
    return job_id


# submit ---------------------------------------------------------------------------
def test_submit_to_an_unknown_pipeline_exits_2_and_creates_nothing(
    cli_env: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "a.txt"
    source.write_text("hello")
    result = cli("submit", "-p", "nosuch", str(source))
    assert result.exit_code == 2
    assert "unknown pipeline 'nosuch'" in result.stderr
    assert "echo" in result.stderr  # the known ones are named
    assert not (cli_env.data_dir / "inbox" / "nosuch").exists()


def test_submit_priority_is_the_jobs_priority(
    cli_env: Settings, db: JobStore, tmp_path: Path
) -> None:
    source = tmp_path / "a.txt"
    source.write_text("hello")
    result = cli("submit", "-p", "echo", "--priority", "7", str(source))
    assert result.exit_code == 0, result.output
    (job,) = db.list_jobs()
    assert (job.pipeline, job.source, job.source_path, job.priority) == (
        "echo",
        "file",
        "echo/a.txt",
        7,
    )
    # The job carries the watcher's key for this file version: the watcher leaves it be.
    version = FileVersion.from_key(job.idempotency_key)
    assert version is not None
    assert version.matches((cli_env.folder("inbox", "echo") / "a.txt").stat())
    assert job.idempotency_key is not None
    assert job.idempotency_key.startswith(f"file:{FileRef('echo', 'a.txt').source_path}:")
    # A later, urgent file is claimed first.
    other = tmp_path / "b.txt"
    other.write_text("urgent")
    assert cli("submit", "-p", "echo", "--priority", "9", str(other)).exit_code == 0
    assert [c.source_path for c in db.claim("w", 2, 30)] == ["echo/b.txt", "echo/a.txt"]


# list and show --------------------------------------------------------------------
def test_unknown_status_pipeline_or_option_values_exit_2(cli_env: Settings, db: JobStore) -> None:
    finished(db, "gone-pipeline", "x")  # jobs of a pipeline removed since are still listed
    assert cli("jobs", "list", "--status", "bogus").exit_code == 2
    assert cli("jobs", "list", "--pipeline", "nosuch").exit_code == 2
    assert cli("jobs", "list", "--limit", "0").exit_code == 2
    assert cli("jobs", "list", "--pipeline", "gone-pipeline").exit_code == 0
    assert cli("jobs", "list", "--pipeline", "echo").exit_code == 0
    assert cli("jobs", "retry", "--status", "bogus").exit_code == 2
    assert cli("jobs", "retry", "--pipeline", "nosuch").exit_code == 2
    assert cli("jobs", "export", "--since", "2026-01-01", "--format", "csv").exit_code == 2
    assert cli("jobs", "export", "--since", "yesterday").exit_code == 2
    assert cli("jobs", "export", "--since", "2026-01-01", "-p", "nosuch").exit_code == 2
    assert cli("jobs", "purge", "--older-than", "-1").exit_code == 2
    assert cli("jobs", "show", "999").exit_code == 1  # well-formed, but no such job


def test_list_and_show_json_have_stable_keys(cli_env: Settings, db: JobStore) -> None:
    first = finished(db, "echo", "one")
    second = finished(db, "echo", "two", status="failed")
    listed = cli("jobs", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)  # one document
    assert [tuple(row) for row in rows] == [LIST_KEYS, LIST_KEYS]
    assert [(r["id"], r["status"]) for r in rows] == [(second, "failed"), (first, "succeeded")]
    only_failed = json.loads(cli("jobs", "list", "--json", "--status", "failed").stdout)
    assert [r["id"] for r in only_failed] == [second]

    shown = cli("jobs", "show", str(first), "--json")
    assert shown.exit_code == 0, shown.output
    job = json.loads(shown.stdout)
    assert tuple(job) == (*SHOW_KEYS, "waiting_reason")
    assert job["waiting_reason"] is None  # not queued
    assert "lease_token" not in job
    assert (job["result_text"], job["completion_tokens"]) == ("result of one", 4)
    assert job["finished_at"].endswith("+00:00")


def test_json_output_is_data_not_markup(cli_env: Settings, db: JobStore) -> None:
    job_id = db.enqueue(NewJob("echo", "[bold red]x[/] \x1b[31m"))
    shown = json.loads(cli("jobs", "show", str(job_id), "--json").stdout)
    assert shown["input_text"] == "[bold red]x[/] \x1b[31m"


# retry ----------------------------------------------------------------------------
def test_retry_takes_several_ids_and_refuses_succeeded_jobs_without_force(
    cli_env: Settings, db: JobStore
) -> None:
    failed = finished(db, "echo", "a", status="failed")
    dead = finished(db, "echo", "b", status="dead")
    done = finished(db, "echo", "c")

    result = cli("jobs", "retry", str(failed), str(dead), str(done), "999")
    assert result.exit_code == 1
    assert f"job {done} is succeeded; --force runs it again" in result.stderr
    assert "no job 999" in result.stderr
    statuses = {j.id: j.status for j in db.list_jobs()}
    assert statuses == {failed: "queued", dead: "queued", done: "succeeded"}

    forced = cli("jobs", "retry", str(done), "--force")
    assert forced.exit_code == 0, forced.output
    job = db.get(done)
    assert job is not None
    assert (job.status, job.attempts, job.result_text) == ("queued", 0, None)


def test_retry_by_filter(cli_env: Settings, db: JobStore) -> None:
    dead = [finished(db, "echo", str(i), status="dead") for i in range(3)]
    failed = finished(db, "echo", "f", status="failed")
    other = finished(db, "other", "o", status="dead")
    done = finished(db, "echo", "s")

    result = cli("jobs", "retry", "--status", "dead", "--pipeline", "echo")
    assert result.exit_code == 0, result.output
    assert "3 job(s) queued again" in result.stdout
    statuses = {j.id: j.status for j in db.list_jobs()}
    assert [statuses[i] for i in dead] == ["queued"] * 3
    assert (statuses[failed], statuses[other], statuses[done]) == ("failed", "dead", "succeeded")

    # --pipeline alone: its failed, dead and cancelled jobs, never the succeeded ones
    assert cli("jobs", "retry", "--pipeline", "echo").exit_code == 0
    statuses = {j.id: j.status for j in db.list_jobs()}
    assert (statuses[failed], statuses[done]) == ("queued", "succeeded")
    # succeeded by filter needs --force, said before anything changes
    refused = cli("jobs", "retry", "--status", "succeeded")
    assert refused.exit_code == 2
    assert "--force" in refused.stderr
    assert cli("jobs", "retry", "--status", "succeeded", "--force").exit_code == 0
    assert db.get(done).status == "queued"  # type: ignore[union-attr]


def test_retry_argument_mistakes_exit_2(cli_env: Settings, db: JobStore) -> None:
    assert cli("jobs", "retry").exit_code == 2
    assert cli("jobs", "retry", "1", "--status", "dead").exit_code == 2
    assert cli("jobs", "retry", "--status", "queued").exit_code == 2


def test_retry_of_a_succeeded_file_job_leaves_its_original_in_done(
    cli_env: Settings, db: JobStore
) -> None:
    done = cli_env.folder("done", "echo")
    done.mkdir(parents=True)
    (done / "a.txt").write_text("hello")
    job_id = db.enqueue(NewJob("echo", source="file", source_path="echo/a.txt"))
    assert job_id is not None
    (job,) = db.claim("w", 1, 30)
    assert db.complete(job.id, job.lease_token, "r", 1, 1)
    db.set_archived_path(job_id, str(done / "a.txt"))

    assert cli("jobs", "retry", str(job_id)).exit_code == 1
    assert (done / "a.txt").read_text() == "hello"  # not moved back into the inbox
    assert not (cli_env.folder("inbox", "echo") / "a.txt").exists()

    forced = cli("jobs", "retry", str(job_id), "--force")
    assert forced.exit_code == 0, forced.output
    assert "moved back" in forced.stdout
    assert (cli_env.folder("inbox", "echo") / "a.txt").read_text() == "hello"
    # The row no longer names done/a.txt: retention must not delete what lands there next.
    moved = db.get(job_id)
    assert moved is not None and moved.archived_path is None


# export ---------------------------------------------------------------------------
def test_export_writes_finished_jobs_with_results_as_jsonl(
    cli_env: Settings, db: JobStore, tmp_path: Path
) -> None:
    old = finished(db, "echo", "old")
    with db.db.begin() as conn:  # finished three days ago
        conn.execute(
            update(Job).where(Job.id == old).values(finished_at=utcnow() - timedelta(days=3))
        )
    ok = finished(db, "echo", "new")
    bad = finished(db, "echo", "bad", status="failed")
    db.enqueue(NewJob("echo", "still queued"))
    since = (utcnow() - timedelta(days=1)).isoformat()

    result = cli("jobs", "export", "--since", since)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [tuple(line) for line in lines] == [EXPORT_KEYS, EXPORT_KEYS]
    assert [(r["id"], r["status"], r["result_text"]) for r in lines] == [
        (ok, "succeeded", "result of new"),
        (bad, "failed", None),
    ]
    assert lines[1]["error"] == "boom"
    assert "exported 2 job(s)" in result.stderr

    target = tmp_path / "out" / "export.jsonl"
    target.parent.mkdir()
    everything = cli("jobs", "export", "--since", "2000-01-01", "--output", str(target))
    assert everything.exit_code == 0, everything.output
    ids = [json.loads(line)["id"] for line in target.read_text().splitlines()]
    assert ids == [old, ok, bad]
    assert list(target.parent.iterdir()) == [target]  # no temp file left behind
    assert (
        cli("jobs", "export", "--since", "2000-01-01", "-o", str(tmp_path / "no" / "x")).exit_code
        == 1
    )
