"""`make bench`: edge-worker's throughput against the plain llama-cpp-python loop.

On the same 64 inputs (bench/workload.py), in one run:
  (a) a plain loop over llama-cpp-python's `create_completion`, the baseline a user writes;
  (b) edge-worker end to end: files dropped into the inbox of a running daemon until every
      result is written;
  (c) the engine alone (continuous batching, shared-prefix reuse).
Each is measured `--runs` times; medians are printed with the ratios b/a and c/a, the
ceiling for this workload from rates measured here, and peak RSS of the daemon.
Figures go to bench/results/<time>.json, the tokens/s-per-slot chart to parallel.png.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.daemon_run import run_daemon_bench  # noqa: E402
from bench.workload import INSTRUCTION, documents, prompt  # noqa: E402
from worker.engine import EngineOptions  # noqa: E402
from worker.engine.batched import BatchedEngine, BatchOptions  # noqa: E402
from worker.engine.model_files import ModelFile  # noqa: E402
from worker.pipelines import Generation  # noqa: E402

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


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM: the peak resident set size of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


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
    return Figures("plain loop", seconds, len(docs), prompt_tokens, generated, latencies)


def engine_alone(
    model: Path, docs: list[str], threads: int, n_ctx: int, parallel: int, reuse: bool = True
) -> Figures:
    """(c) The batched engine fed by `parallel` callers, as the runner's slots do."""
    engine = BatchedEngine(
        ModelFile("bench", model, None),
        EngineOptions(n_ctx=n_ctx, n_threads=threads),
        BatchOptions(parallel=parallel, prefix_cache=reuse),
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
            done = engine.complete(prompt(doc), GREEDY, lambda: False, shared_prefix=INSTRUCTION)
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
    engine.close()
    name = "engine alone" if reuse else "engine alone, no prefix reuse"
    return Figures(name, seconds, len(docs), totals["prompt"], totals["generated"], latencies,
                   prompt_tokens_evaluated=evaluated)  # fmt: skip


def rates(model: Path, threads: int, parallel: int) -> dict[str, float]:
    """Prompt-processing tokens/s and aggregate generation tokens/s at `parallel`."""
    engine = BatchedEngine(
        ModelFile("bench", model, None),
        EngineOptions(n_ctx=1024, n_threads=threads),
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--sweep", default="1,2,4,8,16", help="parallel values for the chart")
    parser.add_argument("--skip", default="", help="comma list of: loop,daemon,engine,sweep")
    args = parser.parse_args()
    model = Path(os.environ.get("EDGE_WORKER_TEST_MODEL",
                                REPO / "var/models/gemma-3-270m-q4_k_m.gguf"))  # fmt: skip
    skip = set(filter(None, args.skip.split(",")))
    docs = documents(args.jobs)
    results: dict[str, Any] = {"jobs": args.jobs, "max_tokens": MAX_TOKENS,
                               "parallel": args.parallel, "threads": args.threads}  # fmt: skip
    runs: dict[str, list[Figures]] = {"loop": [], "daemon": [], "engine": []}
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        if "loop" not in skip:
            runs["loop"].append(plain_loop(model, docs, args.threads, args.n_ctx))
            print("  (a)", runs["loop"][-1].summary(), flush=True)
        if "daemon" not in skip:
            seconds, lat, ptok, gtok, rss = run_daemon_bench(
                model, docs, args.parallel, args.threads, args.n_ctx, MAX_TOKENS
            )
            runs["daemon"].append(
                Figures("edge-worker end to end", seconds, len(docs), ptok, gtok, lat, rss)
            )
            print("  (b)", runs["daemon"][-1].summary(), flush=True)
        if "engine" not in skip:
            runs["engine"].append(
                engine_alone(model, docs, args.threads, args.n_ctx, args.parallel)
            )
            print("  (c)", runs["engine"][-1].summary(), flush=True)
    medians = {k: median_of(v) for k, v in runs.items() if v}
    results["medians"] = medians
    results["runs"] = {k: [r.summary() for r in v] for k, v in runs.items()}

    print("\nmedians of", args.runs, "runs:")
    for med in medians.values():
        print(
            f"  {med['method']:<24} {med['jobs_per_s']:.3f} jobs/s  "
            f"{med['generated_tokens_per_s']:.1f} gen tok/s  "
            f"{med['prompt_tokens_per_s']:.1f} prompt tok/s  "
            f"p50 {med['p50_latency_s']} s  p95 {med['p95_latency_s']} s"
            + (f"  peak RSS {med['peak_rss_mb']} MB" if med.get("peak_rss_mb") else "")
        )
    if "loop" in medians:
        base = medians["loop"]["jobs_per_s"]
        for key, label in (("daemon", "b/a end to end"), ("engine", "c/a engine alone")):
            if key in medians:
                ratio = medians[key]["jobs_per_s"] / base
                results[f"ratio_{key}"] = round(ratio, 2)
                print(f"  ratio {label}: {ratio:.2f}x")

    if runs["engine"]:
        last = runs["engine"][-1]
        with_reuse = (last.prompt_tokens_evaluated or 0) / last.jobs
        without = last.prompt_tokens / last.jobs
        results["prompt_tokens_per_job"] = {"with_reuse": round(with_reuse, 1),
                                            "without_reuse": round(without, 1)}  # fmt: skip
        print(
            f"  prompt tokens evaluated per job: {with_reuse:.0f} with prefix reuse, "
            f"{without:.0f} without (shared prefix: {without - with_reuse:.0f} tokens)"
        )
        measured = rates(model, args.threads, args.parallel)
        gen_per_job = last.generated_tokens / last.jobs
        ceiling = 1 / (with_reuse / measured["prompt_tokens_per_s"]
                       + gen_per_job / measured["generation_tokens_per_s"])  # fmt: skip
        results["rates"] = {k: round(v, 1) for k, v in measured.items()}
        results["ceiling_jobs_per_s"] = round(ceiling, 3)
        print(
            f"  measured rates: {measured['prompt_tokens_per_s']:.0f} prompt tok/s, "
            f"{measured['generation_tokens_per_s']:.0f} gen tok/s at parallel {args.parallel}"
        )
        print(f"  ceiling for this workload: {ceiling:.3f} jobs/s; engine reaches "
              f"{medians['engine']['jobs_per_s'] / ceiling:.0%}"
              + (f", end to end {medians['daemon']['jobs_per_s'] / ceiling:.0%}"
                 if "daemon" in medians else ""))  # fmt: skip

    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    if "sweep" not in skip:
        points: dict[int, float] = {}
        for p in (int(x) for x in args.sweep.split(",")):
            points[p] = rates(model, args.threads, p)["generation_tokens_per_s"]
            print(f"  parallel {p:>2}: {points[p]:.1f} gen tok/s", flush=True)
        results["generation_tokens_per_s_by_parallel"] = points
        chart(points, out_dir / "parallel.png")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote bench/results/{stamp}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Figures", "asdict", "peak_rss_mb"]
