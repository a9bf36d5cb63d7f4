"""A fleet that routes (issue #19): two real daemons on one PostgreSQL job table, each with
its own data folder and its own model, serving the same pipeline. Each file is answered
by the daemon whose inbox it was dropped into (none fails as "removed"); a row for a
pipeline that only a stopped daemon served stays queued, and `jobs show` says why.

Needs PostgreSQL (the `postgres` marker; skipped without EDGE_WORKER_TEST_PG_URL).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import StartDaemon
from tests.acceptance.daemon import daemon_env, run_cli, wait_path, write_pipelines
from tests.conftest import model_path, run_sql

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

QUESTION = 'prompt = "Question: {{ input }}\\nAnswer:"\n[generation]\nmax_tokens = 4\n'
FILES = 3  # per daemon


def config_file(folder: Path) -> Path:
    path = folder / "edge-worker.toml"
    path.write_text(
        "".join(
            f'[models.{name}]\npath = "{model_path()}"\nn_ctx = {n_ctx}\n\n'
            for name, n_ctx in (("m1", 512), ("m2", 768), ("m3", 512))
        )
    )
    return path


def env_for(tmp_path: Path, name: str, url: str, model: str, **pipelines: str) -> dict[str, str]:
    folder = write_pipelines(tmp_path / f"{name}-pipelines", **pipelines)
    return daemon_env(
        tmp_path / name,
        model_path().parent,
        database_url=url,
        config=config_file(tmp_path),
        pipelines_dir=folder,
        model=model,
        sweep_interval=1,
        n_threads=1,
    )


def drop(data_dir: Path, pipeline: str, name: str, text: str) -> None:
    folder = data_dir / "inbox" / pipeline
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}.part").write_text(text)
    (folder / f".{name}.part").rename(folder / name)


def wait_rows(url: str, sql: str, done: Any, timeout: float = 180) -> list[Any]:
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = run_sql(url, sql)
        if done(rows):
            return rows
        time.sleep(0.3)
    raise AssertionError(f"not done within {timeout}s: {rows}")


def test_each_daemon_answers_its_own_files_and_unserved_rows_wait_with_a_reason(
    pg_url: str, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    # A third daemon served `ghost` once, and is stopped now (down for maintenance).
    ghost = env_for(tmp_path, "d3", pg_url, "m3", ghost=QUESTION)
    assert run_cli(ghost, "run", "--once", timeout=120).returncode == 0

    envs = [
        env_for(tmp_path, "d1", pg_url, "m1", common=QUESTION),
        env_for(tmp_path, "d2", pg_url, "m2", common=QUESTION),
    ]
    daemons = [start_daemon(env, name) for env, name in zip(envs, ("d1", "d2"), strict=True)]
    instances = [(tmp_path / d / "instance-id").read_text().strip() for d in ("d1", "d2")]
    assert instances[0] != instances[1]
    workers = [d.wait_for("daemon.ready")["worker"] for d in daemons]

    for i in range(FILES):  # interleaved between the two inboxes
        for d in ("d1", "d2"):
            drop(tmp_path / d, "common", f"{d}-{i}.txt", f"What is {i} plus one?")
    (ghost_id,) = run_sql(
        pg_url,
        "INSERT INTO jobs (pipeline, input_text) VALUES ('ghost', 'boo') RETURNING id",
    )[0]
    (typo_id,) = run_sql(
        pg_url,
        "INSERT INTO jobs (pipeline, input_text) VALUES ('nosuch', 'x') RETURNING id",
    )[0]

    rows = wait_rows(
        pg_url,
        "SELECT source_path, status, error, lease_owner, origin FROM jobs "
        "WHERE pipeline = 'common'",
        lambda rows: len(rows) == 2 * FILES and all(r.status == "succeeded" for r in rows),
    )
    for row in rows:
        owner = 0 if row.source_path.startswith("common/d1-") else 1
        assert row.origin == instances[owner], row
        assert row.lease_owner == workers[owner], row  # answered by its own daemon
    for index, d in enumerate(("d1", "d2")):
        for i in range(FILES):  # originals move to done/ after their rows are final
            wait_path(tmp_path / d / "done" / "common" / f"{d}-{i}.txt")
        done = sorted(p.name for p in (tmp_path / d / "done" / "common").iterdir())
        assert done == [f"{d}-{i}.txt" for i in range(FILES)]
        assert not any("removed" in str(e.get("reason")) for e in daemons[index].events())

    # The typo is claimed and deferred (then failed after the grace); the ghost row is
    # never claimed: the pipeline is another instance's, whose daemon will come back.
    wait_rows(
        pg_url,
        f"SELECT error FROM jobs WHERE id = {typo_id}",
        lambda rows: rows[0].error is not None,
    )
    time.sleep(2.5)  # more than two sweep intervals and many claim rounds
    ((status, attempts, error),) = run_sql(
        pg_url, f"SELECT status, attempts, error FROM jobs WHERE id = {ghost_id}"
    )
    assert (status, attempts, error) == ("queued", 0, None)
    shown = run_cli(envs[0], "jobs", "show", str(ghost_id), "--json")
    assert shown.returncode == 0, shown.stderr
    reason = json.loads(shown.stdout)["waiting_reason"]
    assert reason.startswith("waiting for a daemon serving pipeline ghost (model m3): ")
    assert "none is running" in reason and "(stopped)" in reason
    typo = json.loads(run_cli(envs[1], "jobs", "show", str(typo_id), "--json").stdout)
    assert typo["status"] == "queued"
    assert typo["error"] == "unknown pipeline 'nosuch' (known: common); waiting for a reload"
    assert "no daemon serves it" in typo["waiting_reason"]
    status = json.loads(run_cli(envs[0], "status", "--json").stdout)
    assert set(status["waiting"]) == {"ghost", "nosuch"}
    for daemon in daemons:
        assert daemon.stop() == 0
