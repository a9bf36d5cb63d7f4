"""`make bench`: edge-worker's throughput against the plain llama-cpp-python loop.

On the same 64 inputs (bench/workload.py), in one run:
  (a) a plain loop over llama-cpp-python's `create_completion`, the baseline a user writes;
  (b) edge-worker end to end: files dropped into the inbox of a running daemon until every
      result is written;
  (c) the engine alone (continuous batching, shared-prefix reuse), with the default
      `batch_invariant` on, and (d) the same with it off (faster prompt kernels).
Each is measured `--runs` times, each measurement in a process of its own (llama.cpp
reads some kernel switches once per process); medians are printed with the ratios
b/a, c/a and d/a, the ceiling for this workload from rates measured here, and peak RSS.
Figures go to bench/results/<time>.json, the tokens/s-per-slot chart to parallel.png.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.daemon_run import run_daemon_bench  # noqa: E402
from bench.proc import status_mb  # noqa: E402
from bench.workload import INSTRUCTION, documents, prompt  # noqa: E402
from worker.llm.batched import BatchedEngine, BatchOptions  # noqa: E402
from worker.llm.engine import EngineOptions  # noqa: E402
from worker.llm.generation import Generation  # noqa: E402
from worker.llm.model_files import ModelFile  # noqa: E402

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
    from llama_cpp import Llama

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
    name = "engine alone" if invariant else "engine, batch_invariant off"
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


def prompt_tokens_per_job(
    model: Path, docs: list[str], args: argparse.Namespace
) -> dict[str, float]:
    """Prompt tokens evaluated per job with and without prefix reuse (prefill only)."""
    one_token = Generation(max_tokens=1, temperature=0)
    found = {}
    for reuse in (True, False):
        figures = engine_alone(
            model, docs, args.threads, args.n_ctx, args.parallel, generation=one_token, reuse=reuse
        )
        evaluated = figures.prompt_tokens_evaluated or 0
        found["with_reuse" if reuse else "without_reuse"] = evaluated / figures.jobs
        if reuse:
            found["shared_prefix"] = (figures.prompt_tokens_reused or 0) / figures.jobs
    return found


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """Run one method in this process; returns its figures as JSON-able data."""
    model = Path(
        os.environ.get("EDGE_WORKER_TEST_MODEL", REPO / "var/models/gemma-3-270m-q4_k_m.gguf")
    )
    docs = documents(args.jobs)
    method = args.one
    if method == "loop":
        return plain_loop(model, docs, args.threads, args.n_ctx).__dict__
    if method == "daemon":
        seconds, lat, ptok, gtok, rss = run_daemon_bench(
            model, docs, args.parallel, args.threads, args.n_ctx, MAX_TOKENS
        )
        return Figures("edge-worker end to end", seconds, len(docs), ptok, gtok, lat, rss).__dict__
    if method in ("engine", "engine-fast"):
        invariant = method == "engine"
        figures = engine_alone(model, docs, args.threads, args.n_ctx, args.parallel, invariant)
        return figures.__dict__
    if method == "reuse":
        return prompt_tokens_per_job(model, docs[:8], args)
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
    "loop": "(a)",
    "daemon": "(b)",
    "engine": "(c)",
    "engine-fast": "(d)",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--sweep", default="1,2,4,8,16", help="parallel values for the chart")
    parser.add_argument(
        "--skip", default="", help="comma list of: loop,daemon,engine,engine-fast,sweep"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args)))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, Any] = {
        "jobs": args.jobs,
        "max_tokens": MAX_TOKENS,
        "parallel": args.parallel,
        "threads": args.threads,
    }
    runs: dict[str, list[Figures]] = {m: [] for m in METHODS if m not in skip}
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        for method in runs:
            runs[method].append(Figures(**in_subprocess(method, args)))
            print(f"  {METHODS[method]}", runs[method][-1].summary(), flush=True)
    medians = {k: median_of(v) for k, v in runs.items() if v}
    results["medians"] = medians
    results["runs"] = {k: [r.summary() for r in v] for k, v in runs.items()}

    print("\nmedians of", args.runs, "runs:")
    for med in medians.values():
        print(
            f"  {med['method']:<28} {med['jobs_per_s']:.3f} jobs/s  "
            f"{med['generated_tokens_per_s']:.1f} gen tok/s  "
            f"{med['prompt_tokens_per_s']:.1f} prompt tok/s  "
            f"p50 {med['p50_latency_s']} s  p95 {med['p95_latency_s']} s"
            + (f"  peak RSS {med['peak_rss_mb']} MB" if med.get("peak_rss_mb") else "")
        )
    base = medians["loop"]["jobs_per_s"] if "loop" in medians else None
    if base:
        for key, label in (
            ("daemon", "b/a end to end"),
            ("engine", "c/a engine alone"),
            ("engine-fast", "d/a engine, batch_invariant off"),
        ):
            if key in medians:
                ratio = medians[key]["jobs_per_s"] / base
                results[f"ratio_{key}"] = round(ratio, 2)
                print(f"  ratio {label}: {ratio:.2f}x")

    reuse = in_subprocess("reuse", args)
    results["prompt_tokens_per_job"] = {k: round(v, 1) for k, v in reuse.items()}
    print(
        f"  prompt tokens evaluated per job: {reuse['with_reuse']:.0f} with prefix reuse, "
        f"{reuse['without_reuse']:.0f} without; the shared instruction is "
        f"{reuse['shared_prefix']:.0f} tokens, evaluated once for all {min(8, args.jobs)} jobs"
    )
    if "engine" in medians:
        measured = in_subprocess(f"rates:{args.parallel}", args)
        last = runs["engine"][-1]
        gen_per_job = last.generated_tokens / last.jobs
        prompt_per_job = (last.prompt_tokens_evaluated or 0) / last.jobs  # all the jobs
        ceiling = 1 / (
            prompt_per_job / measured["prompt_tokens_per_s"]
            + gen_per_job / measured["generation_tokens_per_s"]
        )
        results["rates"] = {k: round(v, 1) for k, v in measured.items()}
        results["ceiling_jobs_per_s"] = round(ceiling, 3)
        print(
            f"  measured rates: {measured['prompt_tokens_per_s']:.0f} prompt tok/s, "
            f"{measured['generation_tokens_per_s']:.0f} gen tok/s at parallel {args.parallel}"
        )
        reached = {
            k: medians[k]["jobs_per_s"] / ceiling for k in ("engine", "daemon") if k in medians
        }
        results["ceiling_fraction"] = {k: round(v, 3) for k, v in reached.items()}
        print(
            f"  ceiling for this workload: {ceiling:.3f} jobs/s"
            + (f" ({ceiling / base:.2f}x the plain loop)" if base else "")
            + "; reached: "
            + ", ".join(f"{k} {v:.0%}" for k, v in reached.items())
        )

    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    if "sweep" not in skip:
        points: dict[int, float] = {}
        for p in (int(x) for x in args.sweep.split(",")):
            points[p] = in_subprocess(f"rates:{p}", args)["generation_tokens_per_s"]
            print(f"  parallel {p:>2}: {points[p]:.1f} gen tok/s", flush=True)
        results["generation_tokens_per_s_by_parallel"] = points
        chart(points, out_dir / "parallel.png")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote bench/results/{stamp}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
