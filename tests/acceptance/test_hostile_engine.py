"""Hostile and unlucky input against the real daemon: a JSON Schema too big for a grammar
fails its own line only; a job that kills the worker is the only one that ends dead; a
host whose clock runs ahead does not take other hosts' live jobs (PostgreSQL)."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.daemon import Daemon, daemon_env, db_rows, run_cli, write_pipelines
from tests.acceptance.poison_daemon import POISON_MARKER
from tests.conftest import run_sql

pytestmark = pytest.mark.timeout(600)

ALIASES = '{"gpt-4o-mini": "gemma-3-270m"}'
TERSE = """
prompt = "Text: {{ input }}\\nOne-line summary:"
output_format = "text"
[generation]
max_tokens = 4
temperature = 0.0
"""


def request(custom_id: str, question: str, **body: Any) -> str:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 4,
        **body,
    }
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def schema_format(max_length: int) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {"summary": {"type": "string", "maxLength": max_length}},
        "required": ["summary"],
    }
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


def submit_and_wait(env: dict[str, str], path: Path) -> dict[str, Any]:
    """`edge-worker batch submit FILE --wait`: the final batch object."""
    result = run_cli(env, "batch", "submit", str(path), "--wait", timeout=400)
    assert result.returncode == 0, result.stderr
    final: dict[str, Any] = json.loads(result.stdout[result.stdout.index("{") :])
    return final


def test_a_batch_line_whose_schema_is_too_big_fails_alone_and_the_daemon_keeps_serving(
    data_dir: Path, env: dict[str, str], tmp_path: Path, daemons: list[Daemon]
) -> None:
    env = {**env, "EDGE_WORKER_MODEL_ALIASES": ALIASES, "EDGE_WORKER_N_CTX": "512"}
    daemon = Daemon(env, tmp_path / "daemon.log")
    daemons.append(daemon)
    daemon.wait_for("daemon.ready")

    attack = tmp_path / "attack.jsonl"
    lines = [
        request("before", "What is 1 plus 1?"),
        request("huge", "Summarize: rain.", max_tokens=100, response_format=schema_format(3000)),
        # Within the hard cap, but more than 4 tokens can ever produce.
        request("greedy", "Summarize: sun.", max_tokens=4, response_format=schema_format(500)),
        request("fits", "Reply in JSON.", max_tokens=24, response_format=schema_format(8)),
        request("after", "What is 2 plus 2?"),
    ]
    attack.write_text("\n".join(lines) + "\n")
    final = submit_and_wait(env, attack)
    assert final["status"] == "completed"
    assert final["request_counts"] == {"total": 5, "completed": 3, "failed": 2}
    assert daemon.proc.poll() is None, "the daemon died"

    outbox = data_dir / "outbox" / "batch"
    batch_id = final["id"]
    output_file = outbox / f"attack.jsonl.{batch_id}.output.jsonl"
    outputs = [json.loads(x) for x in output_file.read_text().splitlines()]
    assert sorted(o["custom_id"] for o in outputs) == ["after", "before", "fits"]
    errors = {
        e["custom_id"]: e["error"]
        for e in map(
            json.loads, (outbox / f"attack.jsonl.{batch_id}.errors.jsonl").read_text().splitlines()
        )
    }
    assert set(errors) == {"huge", "greedy"}
    assert errors["huge"]["code"] == "invalid_request"
    assert "maxLength 3000" in errors["huge"]["message"]
    assert "limit is 1000" in errors["huge"]["message"]
    assert "max_tokens 4" in errors["greedy"]["message"]
    assert all("\n" not in e["message"] for e in errors.values())

    # A file dropped after the attack is served by the same process.
    later = tmp_path / "later.jsonl"
    later.write_text(request("next", "What is 3 plus 3?") + "\n")
    assert submit_and_wait(env, later)["request_counts"] == {
        "total": 1,
        "completed": 1,
        "failed": 0,
    }
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_pipelines_validate_refuses_a_schema_too_big_for_a_grammar(
    env: dict[str, str], tmp_path: Path
) -> None:
    huge = (
        'prompt = "{{ input }}"\noutput_format = "json"\n'
        '[json_schema]\ntype = "object"\n'
        '[json_schema.properties.summary]\ntype = "string"\nmaxLength = 4000\n'
    )
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE, huge=huge)
    result = run_cli({**env, "EDGE_WORKER_PIPELINES_DIR": str(pipelines)}, "pipelines", "validate")
    assert result.returncode == 2, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "huge.toml" in said and "json_schema" in said
    assert "maxLength 4000" in said and "limit is 1000" in said


WRAPPER = [sys.executable, str(Path(__file__).with_name("poison_daemon.py"))]
MAX_CRASHES = 2


def test_only_the_job_that_kills_the_worker_ends_dead_its_neighbour_succeeds(
    data_dir: Path, env: dict[str, str], tmp_path: Path, daemons: list[Daemon]
) -> None:
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE)
    env = {
        **env,
        "EDGE_WORKER_PIPELINES_DIR": str(pipelines),
        "EDGE_WORKER_N_CTX": "512",
        "EDGE_WORKER_LEASE_SECONDS": "3",
        "EDGE_WORKER_SWEEP_INTERVAL": "0.5",
        "EDGE_WORKER_MAX_ATTEMPTS": str(MAX_CRASHES),
    }
    assert run_cli(env, "db", "upgrade").returncode == 0
    # One transaction: the daemon claims both at once (two slots), so both are in flight
    # whenever the poison kills it.
    with sqlite3.connect(data_dir / "jobs.db") as conn:
        conn.executemany(
            "INSERT INTO jobs (pipeline, input_text) VALUES ('terse', ?)",
            [(f"Report. {POISON_MARKER} Sales rose.",), ("The bridge reopens on Monday.",)],
        )

    exits: list[int] = []
    for life in range(MAX_CRASHES + 3):  # restarted after each crash, as systemd would
        daemon = Daemon(env, tmp_path / f"daemon{life}.log", program=WRAPPER)
        daemons.append(daemon)
        deadline = time.monotonic() + 120
        while daemon.proc.poll() is None:
            rows = db_rows(data_dir, "SELECT status FROM jobs")
            if all(s in ("succeeded", "failed", "dead") for (s,) in rows):
                break
            assert time.monotonic() < deadline, f"neither a crash nor the end: {rows}"
            time.sleep(0.2)
        if daemon.proc.poll() is None:
            break
        exits.append(daemon.proc.returncode)
        daemon.kill()
    else:
        raise AssertionError(f"still crash-looping after {exits}")

    assert daemon.stop() == 0
    # Twice beside its neighbour, then once alone.
    assert exits == [-signal.SIGABRT] * (MAX_CRASHES + 1)
    poison, innocent = db_rows(data_dir, "SELECT status, error, crashes FROM jobs ORDER BY id")
    assert poison == (
        "dead",
        f"crashed the worker {MAX_CRASHES + 1} times, the last time running alone",
        MAX_CRASHES + 1,
    )
    # It was in flight at every crash beside the poison (the old rule made it dead too);
    # run alone, it succeeded.
    assert innocent[0] == "succeeded" and innocent[2] == MAX_CRASHES


AHEAD = 90


@pytest.mark.postgres
def test_a_daemon_whose_clock_runs_ahead_takes_no_live_job_of_another(
    pg_url: str, gguf: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    pipelines = write_pipelines(tmp_path / "pipelines", terse=TERSE)

    def pg_env(name: str, **settings: object) -> dict[str, str]:
        return daemon_env(
            tmp_path / name,
            gguf.parent,
            database_url=pg_url,
            pipelines_dir=pipelines,
            lease_seconds=20,
            sweep_interval=0.5,
            **settings,
        )

    honest_env = pg_env("honest")
    assert run_cli(honest_env, "db", "upgrade").returncode == 0
    honest = Daemon(honest_env, tmp_path / "honest.log")
    ahead = Daemon(pg_env("ahead", clock_offset_seconds=AHEAD), tmp_path / "ahead.log")
    daemons += [honest, ahead]
    ids = {d.wait_for("daemon.ready")["worker"]: d for d in (honest, ahead)}
    ahead_id = next(w for w, d in ids.items() if d is ahead)
    (skew,) = run_sql(
        pg_url,
        "SELECT extract(epoch FROM started_at - now()) FROM workers WHERE id = :id",
        id=ahead_id,
    )
    assert skew[0] > AHEAD - 30, (
        "clock_offset_seconds is not applied to the daemon's store "
        "(ops/daemon.py: JobStore(..., clock=offset_clock(settings.clock_offset_seconds)))"
    )

    jobs = 16
    run_sql(
        pg_url,
        "INSERT INTO jobs (pipeline, input_text) "
        "SELECT 'terse', 'Shipment ' || g || ' arrived late at the depot.' "
        "FROM generate_series(1, :n) g",
        n=jobs,
    )
    deadline = time.monotonic() + 400
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = run_sql(pg_url, "SELECT status, count(*) FROM jobs GROUP BY status")
        if dict(rows).get("succeeded", 0) == jobs:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"jobs not done: {rows}")
    # Longer than a lease, so the ahead daemon's recovery sweep looked many times.
    time.sleep(2)
    assert honest.stop() == 0 and ahead.stop() == 0

    owners = run_sql(
        pg_url, "SELECT lease_owner, attempts, crashes FROM jobs WHERE status = 'succeeded'"
    )
    assert {(attempts, crashes) for _owner, attempts, crashes in owners} == {(1, 0)}
    by = {owner for owner, _attempts, _crashes in owners}
    assert by == set(ids), f"both daemons should have run jobs: {by}"
    for daemon in (honest, ahead):
        names = [e.get("event") for e in daemon.events()]
        assert "job.recovered" not in names and "job.lease_lost" not in names
