"""`make bench`: edge-worker's throughput against llama.cpp's own llama-server.

Two workloads, in one run, the same prompt text for every method:
  summary: 32 reports (bench/workload.py) behind one shared instruction, at most 128
    tokens each, temperature 0;
  json: 64 reports through the shipped `extract` pipeline (a JSON Schema grammar).
Methods:
  (s)  llama-server (built from the llama.cpp that llama-cpp-python vendors), `-np`
       parallel, the same threads and context per slot, concurrent `/completion`
       requests with `cache_prompt` (and `json_schema` for the json workload);
  (b)  edge-worker end to end: files dropped into a running daemon's inbox until every
       result is written, default settings;
  (c)  the engine alone, default settings, and (d) with `batch_invariant` on (its cost);
  (a)  the plain llama-cpp-python `create_completion` loop (summary only).
Each is measured `--runs` times, each measurement in a process of its own (llama.cpp
reads some kernel switches once per process); medians are printed with the ratios
against llama-server, the plain loop and batch invariance, and the daemon's peak RSS.
Figures go to bench/results/<time>.json, the chart to bench/results/throughput.png.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.daemon_run import run_daemon_bench, summary_pipeline  # noqa: E402
from bench.llama_server import (  # noqa: E402
    ServerOptions,
    llama_cpp_version,
    run_requests,
    running_server,
    server_binary,
)
from bench.proc import status_mb  # noqa: E402
from bench.workload import INSTRUCTION, documents, prompt  # noqa: E402
from worker.config import SHIPPED_PIPELINES_DIR  # noqa: E402
from worker.llm.batched import BatchedEngine, BatchOptions  # noqa: E402
from worker.llm.engine import EngineOptions  # noqa: E402
from worker.llm.generation import Generation  # noqa: E402
from worker.llm.model_files import ModelFile  # noqa: E402
from worker.pipelines.spec import Pipeline, load_pipelines  # noqa: E402

MAX_TOKENS = 128
GREEDY = Generation(max_tokens=MAX_TOKENS, temperature=0, repeat_penalty=1.0)


@dataclass
class Figures:
    """One method's measurement over the workload."""

    method: str
    seconds: float
    jobs: int
    prompt_tokens: int
    generated_tokens: int
    latencies: list[float]
    peak_rss_mb: float | None = None
    prompt_tokens_evaluated: int | None = None
    prompt_tokens_reused: int | None = None

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "method": self.method,
            "jobs_per_s": round(self.jobs_per_s, 4),
            "generated_tokens_per_s": round(self.generated_tokens / self.seconds, 1),
            "prompt_tokens_per_s": round(self.prompt_tokens / self.seconds, 1),
            "p50_latency_s": round(statistics.median(lat), 2),
            "p95_latency_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2),
            "peak_rss_mb": self.peak_rss_mb,
            "seconds": round(self.seconds, 1),
        }


def plain_loop(model: Path, docs: list[str], threads: int, n_ctx: int) -> Figures:
    """(a) What every user writes first: one Llama, a loop over create_completion."""
    import llama_cpp
    from llama_cpp import Llama

    # No extra weight buffers (repack, AMX), as in the engine and llama-server here: the
    # machines this runs on report AMX and die with SIGILL on it.
    defaults = llama_cpp.llama_model_default_params

    def model_params() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_model_default_params = model_params
    llm = Llama(str(model), n_ctx=n_ctx, n_threads=threads, verbose=False)
    latencies, prompt_tokens, generated = [], 0, 0
    started = time.monotonic()
    for doc in docs:
        t0 = time.monotonic()
        out: Any = llm.create_completion(prompt(doc), max_tokens=MAX_TOKENS, temperature=0)
        latencies.append(time.monotonic() - t0)
        prompt_tokens += out["usage"]["prompt_tokens"]
        generated += out["usage"]["completion_tokens"]
    seconds = time.monotonic() - started
    del llm
    return Figures(
        "plain loop",
        seconds,
        len(docs),
        prompt_tokens,
        generated,
        latencies,
        status_mb("self", "VmHWM"),
    )


def engine_alone(
    model: Path,
    docs: list[str],
    threads: int,
    n_ctx: int,
    parallel: int,
    invariant: bool = True,
    generation: Generation = GREEDY,
    reuse: bool = True,
) -> Figures:
    """(c)/(d) The batched engine fed by `parallel` callers, as the runner's slots do."""
    engine = BatchedEngine(
        ModelFile("bench", model, None),
        EngineOptions(n_ctx=n_ctx, n_threads=threads),
        BatchOptions(parallel=parallel, prefix_cache=reuse, batch_invariant=invariant),
    )
    todo: queue.Queue[str] = queue.Queue()
    for doc in docs:
        todo.put(doc)
    latencies: list[float] = []
    totals = {"prompt": 0, "generated": 0}
    lock = threading.Lock()

    def slot() -> None:
        while True:
            try:
                doc = todo.get_nowait()
            except queue.Empty:
                return
            t0 = time.monotonic()
            done = engine.complete(prompt(doc), generation, lambda: False, INSTRUCTION)
            with lock:
                latencies.append(time.monotonic() - t0)
                totals["prompt"] += done.prompt_tokens
                totals["generated"] += done.completion_tokens

    started = time.monotonic()
    workers = [threading.Thread(target=slot) for _ in range(parallel)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.monotonic() - started
    evaluated = engine.stats.prompt_tokens_evaluated
    reused = engine.stats.prompt_tokens_reused
    engine.close()
    name = "engine alone, batch_invariant on" if invariant else "engine alone"
    return Figures(
        name,
        seconds,
        len(docs),
        totals["prompt"],
        totals["generated"],
        latencies,
        status_mb("self", "VmHWM"),
        evaluated,
        reused,
    )


def rates(model: Path, threads: int, n_ctx: int, parallel: int) -> dict[str, float]:
    """Prompt-processing tokens/s and aggregate generation tokens/s at `parallel`."""
    engine = BatchedEngine(
        ModelFile("bench", model, None),
        EngineOptions(n_ctx=n_ctx, n_threads=threads),
        BatchOptions(parallel=parallel, prefix_cache=False),
    )
    try:
        docs = documents(8, seed=3)
        t0 = time.monotonic()
        prompt_tokens = 0
        for doc in docs:  # one at a time: pure prefill, one generated token
            prompt_tokens += engine.complete(
                prompt(doc), Generation(max_tokens=1, temperature=0), lambda: False
            ).prompt_tokens
        prompt_rate = prompt_tokens / (time.monotonic() - t0)
        generated = [0]
        gen = Generation(max_tokens=96, temperature=0, repeat_penalty=1.0, stop=())

        def one(i: int) -> None:
            out = engine.complete(f"Story {i}: Once upon a time", gen, lambda: False)
            generated[0] += out.completion_tokens

        workers = [threading.Thread(target=one, args=(i,)) for i in range(parallel)]
        t0 = time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        gen_rate = generated[0] / (time.monotonic() - t0)
    finally:
        engine.close()
    return {"prompt_tokens_per_s": prompt_rate, "generation_tokens_per_s": gen_rate}


def chart(points: dict[int, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = sorted(points)
    ax.plot(xs, [points[x] for x in xs], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("parallel (sequences decoded at once)")
    ax.set_ylabel("aggregate generated tokens/s")
    ax.set_title("edge-worker engine, Gemma 3 270M Q4_K_M")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def median_of(runs: list[Figures]) -> dict[str, Any]:
    summaries = [r.summary() for r in runs]
    keys = [k for k in summaries[0] if k != "method"]
    merged: dict[str, Any] = {"method": summaries[0]["method"], "runs": len(runs)}
    for key in keys:
        values = [s[key] for s in summaries if s[key] is not None]
        merged[key] = statistics.median(values) if values else None
    return merged


def extract_pipeline() -> Pipeline:
    return load_pipelines(SHIPPED_PIPELINES_DIR)["extract"]


def summary_folder(tmp: Path) -> Path:
    """A pipelines folder whose `bench.toml` renders exactly `bench.workload.prompt`."""
    folder = tmp / "summary"
    folder.mkdir()
    (folder / "bench.toml").write_text(summary_pipeline(MAX_TOKENS))
    return folder


def json_folder(tmp: Path) -> Path:
    """A pipelines folder whose `bench.toml` is the shipped `extract` pipeline."""
    folder = tmp / "json"
    shutil.copytree(SHIPPED_PIPELINES_DIR / "schemas", folder / "schemas")
    (folder / "bench.toml").write_text((SHIPPED_PIPELINES_DIR / "extract.toml").read_text())
    return folder


def server_bodies(workload: str, docs: list[str]) -> list[dict[str, Any]]:
    """The requests llama-server gets: the same prompts and limits as the daemon's jobs."""
    if workload == "summary":
        limits: dict[str, Any] = {"n_predict": MAX_TOKENS, "temperature": 0, "repeat_penalty": 1.0}
        return [{"prompt": prompt(doc), "cache_prompt": True, **limits} for doc in docs]
    pipeline = extract_pipeline()
    gen = pipeline.generation
    common: dict[str, Any] = {
        "n_predict": gen.max_tokens,
        "temperature": 0,
        "repeat_penalty": gen.repeat_penalty,
        "json_schema": pipeline.json_schema,
    }
    return [{"prompt": pipeline.render(doc), "cache_prompt": True, **common} for doc in docs]


def server_run(model: Path, docs: list[str], args: argparse.Namespace, workload: str) -> Figures:
    """(s) llama-server with `-np parallel`, fed by `parallel` concurrent clients."""
    options = ServerOptions(args.parallel, args.threads, args.n_ctx)
    with running_server(model, options) as (base, pid):
        seconds, answers = run_requests(base, server_bodies(workload, docs), args.parallel)
        rss = status_mb(pid, "VmHWM")
    return Figures(
        f"llama-server, {workload}",
        seconds,
        len(docs),
        sum(a.prompt_tokens for a in answers),
        sum(a.generated_tokens for a in answers),
        [a.seconds for a in answers],
        rss,
    )


def daemon_run(model: Path, docs: list[str], args: argparse.Namespace, workload: str) -> Figures:
    """(b) a real daemon, default settings, files dropped into its inbox."""
    with tempfile.TemporaryDirectory(prefix="ew-bench-pipelines-") as tmp:
        folder = summary_folder(Path(tmp)) if workload == "summary" else json_folder(Path(tmp))
        suffix = ".md" if workload == "summary" else ".json"
        seconds, lat, ptok, gtok, rss = run_daemon_bench(
            model, docs, args.parallel, args.threads, args.n_ctx, folder, suffix
        )
    return Figures(f"edge-worker end to end, {workload}", seconds, len(docs), ptok, gtok, lat, rss)


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """Run one method in this process; returns its figures as JSON-able data."""
    model = Path(
        os.environ.get("EDGE_WORKER_TEST_MODEL", REPO / "var/models/gemma-3-270m-q4_k_m.gguf")
    )
    method = args.one
    workload = "json" if method.endswith("-json") else "summary"
    docs = documents(args.json_jobs if workload == "json" else args.jobs)
    if method == "loop":
        return plain_loop(model, docs, args.threads, args.n_ctx).__dict__
    if method.startswith("server"):
        return server_run(model, docs, args, workload).__dict__
    if method.startswith("daemon"):
        return daemon_run(model, docs, args, workload).__dict__
    if method in ("engine", "engine-invariant"):
        invariant = method == "engine-invariant"
        figures = engine_alone(model, docs, args.threads, args.n_ctx, args.parallel, invariant)
        return figures.__dict__
    if method.startswith("rates:"):
        return rates(model, args.threads, args.n_ctx, int(method.split(":")[1]))
    raise SystemExit(f"unknown method {method}")


def in_subprocess(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """`measure_one` in a fresh Python process (llama.cpp reads kernel switches once)."""
    command = [
        sys.executable,
        __file__,
        "--one",
        method,
        "--jobs",
        str(args.jobs),
        "--json-jobs",
        str(args.json_jobs),
        "--parallel",
        str(args.parallel),
        "--threads",
        str(args.threads),
        "--n-ctx",
        str(args.n_ctx),
    ]
    env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_TILED_MM"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench method {method} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


METHODS = {
    "server": "(s) summary",
    "daemon": "(b) summary",
    "engine": "(c) summary",
    "engine-invariant": "(d) summary",
    "loop": "(a) summary",
    "server-json": "(s) json",
    "daemon-json": "(b) json",
}
RATIOS = (
    ("daemon", "server", "daemon / llama-server, summary"),
    ("engine", "server", "engine / llama-server, summary"),
    ("daemon-json", "server-json", "daemon / llama-server, json"),
    ("daemon", "loop", "daemon / plain loop, summary"),
    ("engine", "loop", "engine / plain loop, summary"),
    ("engine-invariant", "engine", "batch_invariant on / default (its cost)"),
)


def bar_chart(medians: dict[str, dict[str, Any]], path: Path) -> None:
    """Jobs/s of each method, by workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in METHODS if m in medians]
    fig, ax = plt.subplots(figsize=(8, 4))
    values = [medians[m]["jobs_per_s"] for m in names]
    bars = ax.barh([medians[m]["method"] for m in names], values)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("jobs/s (median of runs; higher is better)")
    ax.set_title("Gemma 3 270M Q4_K_M on 2 CPU cores: edge-worker vs llama-server")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=32, help="summary workload size")
    parser.add_argument("--json-jobs", type=int, default=64, help="json workload size")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--sweep", default="", help="parallel values for a generation chart")
    parser.add_argument("--skip", default="", help="comma list of: " + ",".join(METHODS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args)))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    server_binary()  # built once, before anything is timed
    results: dict[str, Any] = {
        "jobs": args.jobs,
        "json_jobs": args.json_jobs,
        "max_tokens": MAX_TOKENS,
        "parallel": args.parallel,
        "threads": args.threads,
        "llama_cpp_python": llama_cpp_version(),
    }
    runs: dict[str, list[Figures]] = {m: [] for m in METHODS if m not in skip}
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        for method in runs:
            runs[method].append(Figures(**in_subprocess(method, args)))
            print(f"  {METHODS[method]:<12}", runs[method][-1].summary(), flush=True)
    medians = {k: median_of(v) for k, v in runs.items() if v}
    results["medians"] = medians
    results["runs"] = {k: [r.summary() for r in v] for k, v in runs.items()}

    print("\nmedians of", args.runs, "runs:")
    for med in medians.values():
        print(
            f"  {med['method']:<36} {med['jobs_per_s']:.3f} jobs/s  "
            f"{med['generated_tokens_per_s']:.1f} gen tok/s  "
            f"{med['prompt_tokens_per_s']:.1f} prompt tok/s  "
            f"p50 {med['p50_latency_s']} s  p95 {med['p95_latency_s']} s"
            + (f"  peak RSS {med['peak_rss_mb']} MB" if med.get("peak_rss_mb") else "")
        )
    ratios: dict[str, float] = {}
    for top, bottom, label in RATIOS:
        if top in medians and bottom in medians:
            ratio = medians[top]["jobs_per_s"] / medians[bottom]["jobs_per_s"]
            ratios[label] = round(ratio, 3)
            print(f"  ratio {label}: {ratio:.2f}x")
    results["ratios"] = ratios

    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    bar_chart(medians, out_dir / "throughput.png")
    if args.sweep:
        points: dict[int, float] = {}
        for p in (int(x) for x in args.sweep.split(",")):
            points[p] = in_subprocess(f"rates:{p}", args)["generation_tokens_per_s"]
            print(f"  parallel {p:>2}: {points[p]:.1f} gen tok/s", flush=True)
        results["generation_tokens_per_s_by_parallel"] = points
        chart(points, out_dir / "parallel.png")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote bench/results/{stamp}.json and bench/results/throughput.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
