"""Soak: many jobs through a real `edge-worker run` process, and its memory growth.

Inserts N rows into the job table (short inputs, a pipeline with tiny max_tokens), runs the
daemon on a temporary data dir with the real model, samples the daemon's VmRSS from
/proc/PID/status with the number of finished jobs, and fits RSS against jobs by least
squares after the warm-up. Reports the slope in MB per 1,000 jobs (target: under 5).

    .venv/bin/python bench/soak.py                 # 2,000 jobs (make soak)
    .venv/bin/python bench/soak.py --jobs 300      # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.proc import status_mb  # noqa: E402

EDGE_WORKER = str(Path(sys.executable).parent / "edge-worker")
FINAL = ("succeeded", "failed", "dead", "cancelled")


@dataclass(frozen=True)
class Sample:
    seconds: float
    jobs_done: int
    rss_mb: float


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return sxy / sxx if sxx else 0.0


def pipeline_toml(max_tokens: int) -> str:
    return (
        'prompt = "Item: {{ input }}\\nIn one line:"\n'
        'output_format = "text"\n'
        f"[generation]\nmax_tokens = {max_tokens}\ntemperature = 0.0\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument(
        "--warmup", type=int, default=None, help="jobs ignored by the fit (default: 10%% of --jobs)"
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument(
        "--model", type=Path, default=None, help="GGUF (default: $EDGE_WORKER_TEST_MODEL)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=None, help="write samples and result as JSON")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else args.jobs // 10

    model = args.model or Path(
        os.environ.get("EDGE_WORKER_TEST_MODEL")
        or REPO / "var" / "models" / "gemma-3-270m-q4_k_m.gguf"
    )
    if not model.is_file():
        print(f"model {model} is missing: run `make model`", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="edge-worker-soak-") as tmp:
        root = Path(tmp)
        (root / "pipelines").mkdir()
        (root / "pipelines" / "soak.toml").write_text(pipeline_toml(args.max_tokens))
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
        env.update(
            EDGE_WORKER_DATA_DIR=str(root / "data"),
            EDGE_WORKER_MODELS_DIR=str(model.parent),
            EDGE_WORKER_PIPELINES_DIR=str(root / "pipelines"),
            EDGE_WORKER_N_CTX="512",
            EDGE_WORKER_N_THREADS=str(args.threads),
            EDGE_WORKER_LOG_FORMAT="json",
        )
        subprocess.run([EDGE_WORKER, "db", "upgrade"], env=env, check=True, capture_output=True)
        db = root / "data" / "jobs.db"
        with sqlite3.connect(db) as conn:
            conn.executemany(
                "INSERT INTO jobs (pipeline, input_text) VALUES ('soak', ?)",
                [
                    (f"order {i}: {i % 97} crates, item {i % 31}, day {i % 28}.",)
                    for i in range(args.jobs)
                ],
            )

        log_path = root / "daemon.log"
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(
                [EDGE_WORKER, "run"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            samples: list[Sample] = []
            started = time.monotonic()
            reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            interrupted = False
            try:
                done = 0
                while done < args.jobs:
                    if daemon.poll() is not None:
                        print(log_path.read_text()[-3000:], file=sys.stderr)
                        print(f"daemon exited {daemon.returncode}", file=sys.stderr)
                        return 1
                    marks = ",".join("?" * len(FINAL))
                    ((done,),) = reader.execute(
                        f"SELECT count(*) FROM jobs WHERE status IN ({marks})", FINAL
                    ).fetchall()
                    if done:  # from the first finished job: the model is loaded by then
                        samples.append(
                            Sample(time.monotonic() - started, done, status_mb(daemon.pid, "VmRSS"))
                        )
                    if samples and len(samples) % 30 == 0:
                        last = samples[-1]
                        print(
                            f"{last.seconds:7.0f}s  {done:6d} jobs  RSS {last.rss_mb:7.1f} MB",
                            flush=True,
                        )
                    if args.out and samples and len(samples) % 60 == 0:  # partial results
                        args.out.write_text(json.dumps([asdict(s) for s in samples]))
                    time.sleep(args.interval)
            except KeyboardInterrupt:  # Ctrl-C: report what was measured so far
                interrupted = True
            try:
                statuses = dict(
                    reader.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
                )
            finally:
                reader.close()
                daemon.send_signal(signal.SIGTERM)
                code = daemon.wait(timeout=120)
        job_seconds = [
            float(event["seconds"])
            for line in log_path.read_text(errors="replace").splitlines()
            if line.startswith("{") and '"job.succeeded"' in line
            for event in [json.loads(line)]
        ]

    window = [(s.jobs_done, s.rss_mb) for s in samples if s.jobs_done >= warmup]
    elapsed = samples[-1].seconds
    result = {
        "jobs": args.jobs,
        "interrupted_at_jobs": samples[-1].jobs_done if interrupted else None,
        "max_tokens": args.max_tokens,
        "warmup_jobs": warmup,
        "seconds": round(elapsed, 1),
        "jobs_per_second": round(samples[-1].jobs_done / elapsed, 2),
        "mean_job_seconds": round(sum(job_seconds) / max(len(job_seconds), 1), 3),
        "statuses": statuses,
        "daemon_exit": code,
        "samples_in_fit": len(window),
        "rss_mb_after_first_job": round(samples[0].rss_mb, 1),
        "rss_mb_after_warmup": round(window[0][1], 1) if window else None,
        "rss_mb_last": round(samples[-1].rss_mb, 1),
        "rss_mb_max": round(max(s.rss_mb for s in samples), 1),
        "slope_mb_per_1000_jobs": round(slope(window) * 1000, 3) if len(window) > 2 else None,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps({**result, "samples": [asdict(s) for s in samples]}))
    ok = not interrupted and statuses.get("succeeded") == args.jobs and code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
