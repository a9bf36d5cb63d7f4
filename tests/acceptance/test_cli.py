"""The operator's commands against a real daemon and database."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from tests.acceptance.conftest import DOCUMENT, StartDaemon
from tests.acceptance.daemon import db_rows, run_cli, wait_until_final

pytestmark = pytest.mark.timeout(240)


def test_submit_wait_status_and_jobs(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(env)
    good = tmp_path / "report.txt"
    good.write_text(DOCUMENT)
    bad = tmp_path / "blank.txt"
    bad.write_text("   \n")

    result = run_cli(env, "submit", str(good), str(bad), "--pipeline", "summarize", "--wait")
    assert result.returncode == 1, result.stdout + result.stderr  # one of the two failed
    out = " ".join(result.stdout.split())
    assert "report.txt │ succeeded" in out
    assert "blank.txt │ failed │ empty input: the file holds only whitespace" in out
    assert (data_dir / "outbox" / "summarize" / "report.txt.md").read_text().strip()

    status = run_cli(env, "status")
    assert status.returncode == 0
    assert "summarize" in status.stdout
    assert "running" in status.stdout  # the daemon in the workers table
    assert "gemma-3-270m" in status.stdout

    listing = run_cli(env, "jobs", "list", "--status", "failed")
    assert "blank.txt" in listing.stdout
    (failed_id,) = db_rows(data_dir, "SELECT id FROM jobs WHERE status = 'failed'")[0]
    show = run_cli(env, "jobs", "show", str(failed_id))
    assert "empty input" in show.stdout

    # retry puts the original back into the inbox as a new version: it fails again, alone.
    # (--wait returned once the rows were final and their originals named.)
    retry = run_cli(env, "jobs", "retry", str(failed_id))
    assert retry.returncode == 0, retry.stderr
    assert "moved back" in retry.stdout
    wait_until_final(data_dir, count=3)
    assert db_rows(data_dir, "SELECT count(*) FROM jobs WHERE status = 'failed'") == [(2,)]

    assert run_cli(env, "jobs", "show", "9999").returncode == 1
    assert daemon.stop() == 0


def test_cancel_and_retry_a_table_job(data_dir: Path, env: dict[str, str]) -> None:
    assert run_cli(env, "db", "upgrade").returncode == 0
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        conn.execute("INSERT INTO jobs (pipeline, input_text) VALUES ('summarize', 'x')")
    assert run_cli(env, "jobs", "cancel", "1").returncode == 0
    assert db_rows(data_dir, "SELECT status FROM jobs") == [("cancelled",)]
    assert run_cli(env, "jobs", "cancel", "1").returncode == 1
    assert run_cli(env, "jobs", "retry", "1").returncode == 0
    assert db_rows(data_dir, "SELECT status, attempts FROM jobs") == [("queued", 0)]


def test_pipelines_list_and_model_info(env: dict[str, str]) -> None:
    pipelines = run_cli(env, "pipelines", "list")
    assert pipelines.returncode == 0
    assert "summarize" in pipelines.stdout
    info = run_cli(env, "model", "info")
    assert info.returncode == 0, info.stderr
    text = " ".join(info.stdout.split())
    assert "gemma3" in text
    assert "32768" in text
    assert "a5fd3b62230aa5ec" in text
    assert re.search(r"batch_invariant\W+false", text), text
