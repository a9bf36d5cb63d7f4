"""Mixed models (issue #19): one daemon serving an interleaved workload of three pipelines
on three models within a budget that fits two of them, against the same jobs run by
single-model daemons one after another.

Pipelines: `short` on a generation model with n_ctx 1024, `long` on one with n_ctx 2048
and `embed` on an embedding model (kind "embed", mean pooling, n_ctx 512): the GGUF
given three times in the model table. Files go into the inboxes in turn (short, long,
embed, short, ...). Measured from the first drop to the last output, each daemon
already started:

  mixed:  one daemon serving every pipeline, within `budget` (default: the two largest
          models' estimates from `edge-worker model list` plus 5%, so any two fit and
          never all three: the mixed run swaps a model out at least once);
  single: for each pipeline, a daemon serving only it, with only its jobs.

`ratio` = the mixed daemon's jobs/s over the jobs/s of the single runs taken together
(their seconds added up); the target is at least 0.9. The mixed run's loads and swaps
are reported. Embeddings/s against llama-server is bench/embeddings.py.

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
# name -> (kind, n_ctx)
MODELS = {
    "small-ctx": ("generate", 1024),
    "large-ctx": ("generate", 2048),
    "embedder": ("embed", 512),
}
PIPELINES = {"short": "small-ctx", "long": "large-ctx", "embed": "embedder"}
PROMPT = "Summarize the report in one sentence.\\n\\nReport: {{ input }}\\n\\nSummary:"


def pipeline_toml(model: str, max_tokens: int) -> str:
    if MODELS[model][0] == "embed":
        return f'model = "{model}"\n'  # a file's text in, its vector out
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
            words = texts[i * len(pipelines) + k].split()[:120]  # fits n_ctx 512
            files.append((pipeline, f"doc{i:03d}.txt", " ".join(words)))
    return files


def prepare(
    root: Path, model: Path, pipelines: dict[str, str], max_tokens: int, settings: dict[str, str]
) -> dict[str, str]:
    """The pipelines folder and model table serving `pipelines`; the daemon's environment."""
    folder = root / "pipelines"
    folder.mkdir(parents=True)
    for name, model_name in pipelines.items():
        (folder / f"{name}.toml").write_text(pipeline_toml(model_name, max_tokens))
    config = root / "edge-worker.toml"
    config.write_text(
        "".join(
            f'[models.{name}]\npath = "{model}"\nkind = "{kind}"\nn_ctx = {n_ctx}\n'
            + ('pooling = "mean"\n' if kind == "embed" else "")
            + "\n"
            for name, (kind, n_ctx) in MODELS.items()
            if name in pipelines.values()
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
    env.update(
        EDGE_WORKER_DATA_DIR=str(root / "data"),
        EDGE_WORKER_MODELS_DIR=str(model.parent),
        EDGE_WORKER_PIPELINES_DIR=str(folder),
        EDGE_WORKER_CONFIG=str(config),
        EDGE_WORKER_MODEL=next(iter(pipelines.values())),
        EDGE_WORKER_SETTLE_SECONDS="0.2",
        EDGE_WORKER_LOG_FORMAT="json",
        **settings,
    )
    return env


def budget_for_two(env: dict[str, str]) -> str:
    """A budget that fits the two largest served models and not all three: their
    estimates (`edge-worker model list --json`, from the GGUF header) plus 5%, the most
    a load's measured memory (which the router counts once known) may exceed one."""
    listed = subprocess.run(
        [EDGE_WORKER, "model", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    sizes = sorted(int(m["estimate"]) for m in json.loads(listed.stdout)["models"] if m["served"])
    assert len(sizes) == 3, sizes
    budget = -(-(sizes[1] + sizes[2]) * 105 // 100 // 2**20)  # MiB, rounded up
    if budget << 20 >= sum(sizes):  # the smallest is under 5% of the others: not these models
        raise RuntimeError(f"no budget fits two of {sizes} but not three")
    return f"{budget}MiB"


def run_daemon(
    root: Path, env: dict[str, str], pipelines: dict[str, str], files: list[tuple[str, str, str]]
) -> dict[str, Any]:
    """Start a daemon with `env` (from `prepare`), drop `files`, wait for every output."""
    data = Path(env["EDGE_WORKER_DATA_DIR"])
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
        "loaded": [e["model"] for e in events if e.get("event") == "model.loaded"],
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
        root = Path(tmp) / "mixed"
        env = prepare(root, model, PIPELINES, max_tokens, settings)
        env["EDGE_WORKER_MEMORY_BUDGET"] = budget = budget or budget_for_two(env)
        mixed = run_daemon(root, env, PIPELINES, files)
        single: dict[str, Any] = {}
        for pipeline, model_name in PIPELINES.items():
            own = [f for f in files if f[0] == pipeline]
            root = Path(tmp) / pipeline
            env = prepare(root, model, {pipeline: model_name}, max_tokens, settings)
            single[pipeline] = run_daemon(root, env, {pipeline: model_name}, own)
    single_seconds = sum(s["seconds"] for s in single.values())
    single_rate = len(files) / single_seconds
    return {
        "jobs": len(files),
        "pipelines": PIPELINES,
        "max_tokens": max_tokens,
        "budget": budget,
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
    parser.add_argument("--budget", default=None, help="default: fits any two of the three")
    args = parser.parse_args()
    result = measure(
        args.model, args.jobs, args.max_tokens, args.threads, args.parallel, args.budget
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
