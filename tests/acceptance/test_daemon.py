"""The foundation end to end: the real daemon, the real Gemma model, real folders and signals."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.acceptance.conftest import DOCUMENT, StartDaemon
from tests.acceptance.daemon import (
    db_rows,
    run_cli,
    wait_path,
    wait_until_final,
    write_slowly,
)

pytestmark = pytest.mark.timeout(240)


def test_files_rows_and_bad_input_then_sigterm(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    inbox = data_dir / "inbox" / "summarize"
    inbox.mkdir(parents=True)
    (inbox / "before.txt").write_text(DOCUMENT)

    daemon = start_daemon(env, ready=False)
    ready = daemon.wait_for("daemon.ready")
    assert ready["inbox"] == str((data_dir / "inbox").resolve())

    (inbox / "after.md").write_text("# Notes\n\n" + DOCUMENT)
    (inbox / "binary.dat").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (inbox / "empty.txt").write_bytes(b"")
    (inbox / ".hidden.txt").write_text(DOCUMENT)  # never read
    (inbox / "upload.txt.part").write_text(DOCUMENT)  # never read
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        conn.execute("INSERT INTO jobs (pipeline, input_text) VALUES ('summarize', ?)", (DOCUMENT,))

    rows = wait_until_final(data_dir, count=5, timeout=180)
    assert len(rows) == 5, rows

    outbox = data_dir / "outbox" / "summarize"
    for name in ("before.txt", "after.md"):
        assert (outbox / f"{name}.md").read_text().strip(), f"empty result for {name}"
        wait_path(data_dir / "done" / "summarize" / name)  # moved after the row is final
        assert not (inbox / name).exists()

    failed = data_dir / "failed" / "summarize"
    for name in ("binary.dat", "empty.txt"):  # moved (after its .error.json) once final
        wait_path(failed / name)
    reasons = {
        name: json.loads((failed / f"{name}.error.json").read_text())["error"]
        for name in ("binary.dat", "empty.txt")
    }
    assert reasons["binary.dat"].startswith("binary content: NUL byte at offset")
    assert reasons["empty.txt"] == "empty input: the file has no text"
    assert (inbox / ".hidden.txt").exists()
    assert (inbox / "upload.txt.part").exists()

    ((status, result, prompt_tokens, completion_tokens, finished),) = db_rows(
        data_dir,
        "SELECT status, result_text, prompt_tokens, completion_tokens, finished_at "
        "FROM jobs WHERE source = 'table'",
    )
    assert status == "succeeded"
    assert result.strip()
    assert prompt_tokens > 50
    assert completion_tokens > 0
    assert finished is not None

    assert daemon.stop(signal.SIGTERM, timeout=60) == 0
    assert db_rows(data_dir, "SELECT count(*) FROM jobs WHERE status = 'running'") == [(0,)]
    assert not list((data_dir / "outbox").rglob("*.tmp"))


def test_a_file_still_being_written_is_taken_only_when_complete(
    data_dir: Path, env: dict[str, str], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(env)
    data = (DOCUMENT * 3).encode()
    # 8 writes 0.2 s apart: longer than the 0.5 s settle time in all, shorter between writes
    write_slowly(data_dir / "inbox" / "summarize" / "slow.txt", data, chunks=8, pause=0.2)
    wait_until_final(data_dir, count=1)
    time.sleep(1.5)  # a partial version would have been queued by now
    rows = db_rows(data_dir, "SELECT status, idempotency_key FROM jobs")
    assert len(rows) == 1, rows
    assert rows[0][0] == "succeeded"
    assert f":{len(data)}:" in rows[0][1]  # the key records the complete size
    assert wait_path(data_dir / "done" / "summarize" / "slow.txt").read_bytes() == data
    assert daemon.stop() == 0


def test_run_once_drains_inbox_and_queue_then_exits(data_dir: Path, env: dict[str, str]) -> None:
    inbox = data_dir / "inbox" / "summarize"
    inbox.mkdir(parents=True)
    for i in range(2):
        (inbox / f"doc{i}.txt").write_text(DOCUMENT)
    assert run_cli(env, "db", "upgrade").returncode == 0
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        conn.execute("INSERT INTO jobs (pipeline, input_text) VALUES ('summarize', 'Hi there.')")
    result = run_cli(env, "run", "--once", timeout=180)
    assert result.returncode == 0, result.stderr
    statuses = db_rows(data_dir, "SELECT status FROM jobs")
    assert sorted(s for (s,) in statuses) == ["succeeded"] * 3
    assert sorted(p.name for p in (data_dir / "outbox" / "summarize").iterdir()) == [
        "doc0.txt.md",
        "doc1.txt.md",
    ]


def test_bad_config_stops_start_up_naming_the_setting(data_dir: Path, env: dict[str, str]) -> None:
    result = run_cli({**env, "EDGE_WORKER_N_CTX": "lots"}, "run")
    assert result.returncode == 2
    assert "EDGE_WORKER_N_CTX" in result.stderr
    assert "valid integer" in result.stderr


def test_bad_pipeline_stops_start_up_naming_file_and_field(
    data_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "broken.toml").write_text('prompt = "{{ input }}"\noutput_format = "pdf"\n')
    result = run_cli({**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}, "run")
    assert result.returncode == 2
    assert "broken.toml: field output_format" in result.stderr.replace("\n", "")


@pytest.mark.parametrize("problem", ["missing", "truncated", "mismatch"])
def test_bad_model_stops_start_up_before_any_job_is_claimed(
    data_dir: Path, env: dict[str, str], tmp_path: Path, gguf: Path, problem: str
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    if problem == "truncated":
        (models / gguf.name).write_bytes(gguf.read_bytes()[:5_000_000])
    elif problem == "mismatch":
        (models / gguf.name).write_bytes(gguf.read_bytes()[:-1] + b"\x00")
    env = {**env, "EDGE_WORKER_MODELS_DIR": str(models)}
    assert run_cli(env, "db", "upgrade").returncode == 0
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        conn.execute("INSERT INTO jobs (pipeline, input_text) VALUES ('summarize', 'x')")
    result = run_cli(env, "run")
    assert result.returncode == 3
    stderr = " ".join(result.stderr.split())
    expected = {
        "missing": "does not exist; run `make model`",
        "truncated": "is corrupt or truncated",
        "mismatch": "is corrupt or truncated",
    }[problem]
    assert expected in stderr
    assert db_rows(data_dir, "SELECT status, attempts FROM jobs") == [("queued", 0)]
