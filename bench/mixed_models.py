"""Mixed models (issue #19): one daemon serving an interleaved workload of pipelines on
different models, against the same jobs run by single-model daemons one after another.

Pipelines: `short` on a model with n_ctx 1024 and `long` on one with n_ctx 2048 (both
the GGUF given, two entries of the model table), and the embedding model's pipeline
once the embedding engine exists (`embed_pipeline`). Files go into the inboxes in
turn (short, long, short, long, ...). Measured from the first drop to the last output,
each daemon already started:

  mixed:  one daemon serving every pipeline, within `budget` (default: the daemon's,
          which fits both models here, so both stay loaded and split the cores);
  single: for each pipeline, a daemon serving only it, with only its jobs.

`ratio` = the mixed daemon's jobs/s over the jobs/s of the single runs taken together
(their seconds added up); the target is at least 0.9. With a `budget` that fits one
model at a time the mixed run swaps models; its loads and swaps are reported.

    python bench/mixed_models.py --model var/models/gemma-3-270m-q4_k_m.gguf --jobs 12
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.proc import status_mb  # noqa: E402
from bench.workload import documents  # noqa: E402

EDGE_WORKER = str(Path(sys.executable).parent / "edge-worker")
MODELS = {"small-ctx": 1024, "large-ctx": 2048}
PIPELINES = {"short": "small-ctx", "long": "large-ctx"}
PROMPT = "Summarize the report in one sentence.\\n\\nReport: {{ input }}\\n\\nSummary:"


def pipeline_toml(model: str, max_tokens: int) -> str:
    return (
        f'model = "{model}"\nprompt = "{PROMPT}"\n'
        f"[generation]\nmax_tokens = {max_tokens}\ntemperature = 0.0\nrepeat_penalty = 1.0\n"
    )


def workload(jobs: int, pipelines: list[str]) -> list[tuple[str, str, str]]:
    """(pipeline, file name, text), interleaved across the pipelines."""
    texts = documents(jobs * len(pipelines))
    files = []
    for i in range(jobs):
        for k, pipeline in enumerate(pipelines):
            words = texts[i * len(pipelines) + k].split()[:120]  # fits n_ctx 1024
            files.append((pipeline, f"doc{i:03d}.txt", " ".join(words)))
    return files


def run_daemon(
    root: Path,
    model: Path,
    pipelines: dict[str, str],
    files: list[tuple[str, str, str]],
    max_tokens: int,
    settings: dict[str, str],
) -> dict[str, Any]:
    """Start a daemon serving `pipelines`, drop `files`, wait for every output."""
    folder = root / "pipelines"
    folder.mkdir(parents=True)
    for name, model_name in pipelines.items():
        (folder / f"{name}.toml").write_text(pipeline_toml(model_name, max_tokens))
    config = root / "edge-worker.toml"
    config.write_text(
        "".join(
            f'[models.{name}]\npath = "{model}"\nn_ctx = {n_ctx}\n\n'
            for name, n_ctx in MODELS.items()
            if name in pipelines.values()
        )
    )
    data = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
    env.update(
        EDGE_WORKER_DATA_DIR=str(data),
        EDGE_WORKER_MODELS_DIR=str(model.parent),
        EDGE_WORKER_PIPELINES_DIR=str(folder),
        EDGE_WORKER_CONFIG=str(config),
        EDGE_WORKER_MODEL=next(iter(pipelines.values())),
        EDGE_WORKER_SETTLE_SECONDS="0.2",
        EDGE_WORKER_LOG_FORMAT="json",
        **settings,
    )
    log_path = root / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([EDGE_WORKER, "run"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 180
            while b'"daemon.ready"' not in log_path.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log_path.read_text())
                time.sleep(0.1)
            started = time.monotonic()
            for pipeline, name, text in files:
                inbox = data / "inbox" / pipeline
                (inbox / f".{name}.part").write_text(text)
                (inbox / f".{name}.part").rename(inbox / name)
            while _outputs(data, pipelines) < len(files):
                if proc.poll() is not None:
                    raise RuntimeError(log_path.read_text())
                time.sleep(0.05)
            seconds = time.monotonic() - started
            peak = status_mb(proc.pid, "VmHWM")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    events = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    failed = [e for e in events if e.get("event") == "job.failed"]
    if failed:
        raise RuntimeError(f"jobs failed: {failed[:3]}")
    return {
        "seconds": round(seconds, 2),
        "jobs": len(files),
        "jobs_per_s": round(len(files) / seconds, 3),
        "loads": sum(e.get("event") == "model.loaded" for e in events),
        "swaps": sum(e.get("event") == "model.swap" for e in events),
        "peak_rss_mb": peak,
    }


def _outputs(data: Path, pipelines: dict[str, str]) -> int:
    return sum(
        len(list((data / "outbox" / p).glob("*"))) if (data / "outbox" / p).is_dir() else 0
        for p in pipelines
    )


def measure(
    model: Path,
    jobs: int = 12,
    max_tokens: int = 32,
    threads: int | None = None,
    parallel: int = 2,
    budget: str | None = None,
) -> dict[str, Any]:
    """The mixed run and the single runs of the same jobs; see the module doc."""
    settings = {"EDGE_WORKER_PARALLEL": str(parallel)}
    if threads is not None:
        settings["EDGE_WORKER_N_THREADS"] = str(threads)
    files = workload(jobs, list(PIPELINES))
    with tempfile.TemporaryDirectory(prefix="ew-mixed-") as tmp:
        mixed_settings = dict(settings)
        if budget is not None:
            mixed_settings["EDGE_WORKER_MEMORY_BUDGET"] = budget
        mixed = run_daemon(Path(tmp) / "mixed", model, PIPELINES, files, max_tokens, mixed_settings)
        single: dict[str, Any] = {}
        for pipeline, model_name in PIPELINES.items():
            own = [f for f in files if f[0] == pipeline]
            single[pipeline] = run_daemon(
                Path(tmp) / pipeline, model, {pipeline: model_name}, own, max_tokens, settings
            )
    single_seconds = sum(s["seconds"] for s in single.values())
    single_rate = len(files) / single_seconds
    return {
        "jobs": len(files),
        "pipelines": PIPELINES,
        "max_tokens": max_tokens,
        "budget": budget or "default",
        "mixed": mixed,
        "single": single,
        "single_jobs_per_s": round(single_rate, 3),
        "ratio": round(mixed["jobs_per_s"] / single_rate, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "var/models/gemma-3-270m-q4_k_m.gguf")
    parser.add_argument("--jobs", type=int, default=12, help="per pipeline")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="per engine (default: split)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--budget", default=None, help='e.g. "1300MiB": one model at a time')
    args = parser.parse_args()
    result = measure(
        args.model, args.jobs, args.max_tokens, args.threads, args.parallel, args.budget
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
