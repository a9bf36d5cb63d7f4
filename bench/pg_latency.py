"""Insert-to-claim latency on PostgreSQL for an idle daemon (LISTEN/NOTIFY).

Starts one real `edge-worker run` on a fresh database of the server at --url,
with a tiny pipeline and, by default, a 30 s poll interval (so a fast claim can
only come from NOTIFY). Then, 20 times: wait until the daemon is idle, insert one
row with plain SQL, and measure from just before the INSERT to the row's
`started_at` (written by the claim). Prints every sample, the median and p95.
The goal (issue 7): median under 200 ms.

    make bench-latency            # or: .venv/bin/python bench/pg_latency.py --url URL
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
EDGE_WORKER = str(Path(sys.executable).parent / "edge-worker")
TINY = """
description = "bench: a few tokens"
prompt = "Question: {{ input }}\\nAnswer:"
[generation]
max_tokens = 4
temperature = 0.0
"""


def libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def wait_for_event(log: Path, name: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("event") == name:
                return
        if proc.poll() is not None:
            sys.exit(f"the daemon exited ({proc.returncode}):\n{log.read_text()}")
        time.sleep(0.1)
    sys.exit(f"no {name} within {timeout}s:\n{log.read_text()}")


def measure(conn: psycopg.Connection[tuple[object, ...]], samples: int) -> list[float]:
    """Milliseconds from insert to claim, one idle wait apiece."""
    latencies = []
    for i in range(samples):
        time.sleep(0.5)  # the daemon has finished the last job and waits again
        before = datetime.now(UTC)
        row = conn.execute(
            "INSERT INTO jobs (pipeline, input_text) VALUES ('tiny', %s) RETURNING id",
            (f"What is {i} plus one?",),
        ).fetchone()
        assert row is not None
        job_id = row[0]
        deadline = time.monotonic() + 60
        while True:
            found = conn.execute(
                "SELECT started_at, status FROM jobs WHERE id = %s", (job_id,)
            ).fetchone()
            assert found is not None
            started_at, status = found
            if started_at is not None and status not in ("queued", "running"):
                break
            if time.monotonic() > deadline:
                sys.exit(f"job {job_id} not finished within 60 s")
            time.sleep(0.01)
        assert isinstance(started_at, datetime)
        latency = (started_at - before).total_seconds() * 1000
        latencies.append(latency)
        print(f"  job {job_id:3d}: {latency:7.1f} ms ({status})")
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(fraction * len(ranked)) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="postgresql+psycopg://... (any database)")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--poll-interval", type=float, default=30.0)
    parser.add_argument("--model", default=os.environ.get("EDGE_WORKER_TEST_MODEL"))
    args = parser.parse_args()
    if not args.model:
        sys.exit("set EDGE_WORKER_TEST_MODEL or --model to the GGUF file")

    database = f"ew_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq(args.url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    url = make_url(args.url).set(database=database).render_as_string(hide_password=False)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="ew-bench-") as tmp:
            pipelines = Path(tmp) / "pipelines"
            pipelines.mkdir()
            (pipelines / "tiny.toml").write_text(TINY)
            env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
            env.update(
                EDGE_WORKER_DATA_DIR=str(Path(tmp) / "data"),
                EDGE_WORKER_MODELS_DIR=str(Path(args.model).parent),
                EDGE_WORKER_DATABASE_URL=url,
                EDGE_WORKER_PIPELINES_DIR=str(pipelines),
                EDGE_WORKER_POLL_INTERVAL=str(args.poll_interval),
                EDGE_WORKER_LOG_FORMAT="json",
            )
            log = Path(tmp) / "daemon.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [EDGE_WORKER, "run"], env=env, stdout=out, stderr=subprocess.STDOUT
                )
                wait_for_event(log, "db.listening", proc, timeout=120)
                print(
                    f"idle daemon on PostgreSQL, poll_interval {args.poll_interval} s; "
                    f"{args.samples} inserts, one at a time:"
                )
                with psycopg.connect(libpq(url), autocommit=True) as conn:
                    latencies = measure(conn, args.samples)
                proc.terminate()
                proc.wait(timeout=60)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        with psycopg.connect(libpq(args.url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    median = statistics.median(latencies)
    p95 = percentile(latencies, 0.95)
    verdict = "under" if median < 200 else "NOT under"
    print(
        f"insert-to-claim latency: median {median:.1f} ms, p95 {p95:.1f} ms, "
        f"max {max(latencies):.1f} ms (n={len(latencies)}); median {verdict} 200 ms"
    )
    return 0 if median < 200 else 1


if __name__ == "__main__":
    sys.exit(main())
