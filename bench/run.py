"""`make bench`: edge-worker's throughput against llama.cpp's own llama-server and the
kernels' ceiling.

Three workloads (bench/methods.py), the same prompt text for every method: summary (32
reports, 128 tokens), json (64 reports through the `extract` pipeline's JSON Schema) and
incidents (32 longer reports, 48-token answers: the second workload, tuned on by nobody).
Methods:
  (s)  llama-server (built from the llama.cpp that llama-cpp-python vendors), `-np`
       parallel, the same threads and context per slot, concurrent `/completion`
       requests with `cache_prompt` (and `json_schema` for json), its defaults (repacked
       weights) unless a probe finds they crash here, then `--no-repack`;
  (b)  edge-worker end to end: files dropped into a running daemon's inbox until every
       result is written, default settings;
  (c)  the engine alone, default settings; (d) with `batch_invariant` on (its cost);
       on json also without the grammar, each job generating as many tokens as it did
       with it (the grammar's cost);
  (a)  the plain llama-cpp-python `create_completion` loop (summary only);
  (k)  the ceiling: `llama-batched-bench` at each workload's shape (bench/ceiling.py),
       and `llama-bench` pp512/tg128 once.
Each is measured `--runs` times, each measurement in a process of its own (llama.cpp
reads some kernel switches once per process); medians are printed with the ratios.
Then the other helpers' bench modules (bench/extras.py) that exist, one row each.
Figures go to bench/results/<time>.json, the chart to bench/results/throughput.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ceiling import Shape, batched_bench, llama_bench  # noqa: E402
from bench.daemon_run import run_daemon_bench  # noqa: E402
from bench.extras import EXTRAS, available, format_row, run_extra  # noqa: E402
from bench.llama_server import (  # noqa: E402
    ServerOptions,
    llama_cpp_version,
    run_requests,
    running_server,
    server_binary,
    server_repack_works,
)
from bench.methods import (  # noqa: E402
    MAX_TOKENS,
    Figures,
    Workload,
    engine_alone,
    extract_pipeline,
    median_of,
    plain_loop,
    workload,
)
from worker.llm.batched import BatchOptions  # noqa: E402
from worker.llm.engine import EngineOptions  # noqa: E402
from worker.llm.repack_probe import probe_repack  # noqa: E402

# method: (label, workload). Engine variants take BatchOptions changes from ENGINE_VARIANTS.
METHODS = {
    "server": ("(s) summary", "summary"),
    "daemon": ("(b) summary", "summary"),
    "engine": ("(c) summary", "summary"),
    "engine-invariant": ("(d) summary", "summary"),
    "loop": ("(a) summary", "summary"),
    "server-json": ("(s) json", "json"),
    "daemon-json": ("(b) json", "json"),
    "engine-json": ("(c) json", "json"),
    "engine-json-nogrammar": ("(c) json, no grammar", "json"),
    "server-incidents": ("(s) incidents", "incidents"),
    "daemon-incidents": ("(b) incidents", "incidents"),
    # Not run unless named in --with: one row per change tried (docs/performance.md).
    "engine-nospec": ("(c) summary, no speculation", "summary"),
    "engine-p16": ("(c) summary, parallel 16", "summary"),
    "engine-json-nospec": ("(c) json, no speculation", "json"),
    "engine-incidents": ("(c) incidents", "incidents"),
    "engine-incidents-nospec": ("(c) incidents, no speculation", "incidents"),
}
OPTIONAL = {m for m in METHODS if m.endswith(("-nospec", "-p16")) or m == "engine-incidents"}
ENGINE_VARIANTS: dict[str, dict[str, Any]] = {
    "engine": {},
    "engine-invariant": {"batch_invariant": True},
    "engine-json": {},
    "engine-json-nogrammar": {},
    "engine-nospec": {"speculate": 0},
    "engine-p16": {"parallel": 16},
    "engine-json-nospec": {"speculate": 0},
    "engine-incidents": {},
    "engine-incidents-nospec": {"speculate": 0},
}
RATIOS = (
    ("daemon", "server", "daemon / llama-server, summary"),
    ("daemon-json", "server-json", "daemon / llama-server, json"),
    ("daemon-incidents", "server-incidents", "daemon / llama-server, incidents"),
    ("engine", "server", "engine / llama-server, summary"),
    ("engine-json", "engine-json-nogrammar", "json with its grammar / without (same lengths)"),
    ("daemon", "loop", "daemon / plain loop, summary"),
    ("engine-invariant", "engine", "batch_invariant on / default (its cost)"),
    ("engine", "engine-nospec", "speculation / none, summary"),
    ("engine-json", "engine-json-nospec", "speculation / none, json"),
    ("engine-incidents", "engine-incidents-nospec", "speculation / none, incidents"),
    ("engine-p16", "engine", "parallel 16 / 8, summary"),
)


def model_path() -> Path:
    default = REPO / "var/models/gemma-3-270m-q4_k_m.gguf"
    return Path(os.environ.get("EDGE_WORKER_TEST_MODEL", default))


def server_bodies(load: Workload, docs: list[str]) -> list[dict[str, Any]]:
    """The requests llama-server gets: the same prompts and limits as the daemon's jobs."""
    gen = load.generation
    common: dict[str, Any] = {
        "n_predict": gen.max_tokens,
        "temperature": 0,
        "repeat_penalty": gen.repeat_penalty,
    }
    if load.name == "json":
        common["json_schema"] = extract_pipeline().json_schema
    return [{"prompt": load.prompt(doc), "cache_prompt": True, **common} for doc in docs]


def server_run(model: Path, load: Workload, docs: list[str], args: argparse.Namespace) -> Figures:
    """(s) llama-server with `-np parallel`, fed by `parallel` concurrent clients."""
    options = ServerOptions(args.parallel, args.threads, args.n_ctx, repack=args.server_repack)
    with running_server(model, options) as (base, pid):
        seconds, answers = run_requests(base, server_bodies(load, docs), args.parallel)
        rss = pid_rss(pid)
    return Figures(
        f"llama-server, {load.name}",
        seconds,
        len(docs),
        sum(a.prompt_tokens for a in answers),
        sum(a.generated_tokens for a in answers),
        [a.seconds for a in answers],
        rss,
        per_job_tokens=[a.generated_tokens for a in answers],
    )


def pid_rss(pid: int) -> float:
    from bench.proc import status_mb

    return status_mb(pid, "VmHWM")


def daemon_run(model: Path, load: Workload, docs: list[str], args: argparse.Namespace) -> Figures:
    """(b) a real daemon, default settings, files dropped into its inbox."""
    with tempfile.TemporaryDirectory(prefix="ew-bench-pipelines-") as tmp:
        folder = load.daemon_pipeline(Path(tmp))
        seconds, lat, ptok, gtok, rss = run_daemon_bench(
            model, docs, args.parallel, args.threads, args.n_ctx, folder, load.suffix
        )
    return Figures(f"edge-worker end to end, {load.name}", seconds, len(docs), ptok, gtok, lat, rss)


def ceiling(model: Path, load: Workload, args: argparse.Namespace) -> dict[str, Any]:
    """(k) llama-batched-bench at this workload's shape: the mean prompt tokens a job
    computes after the shared prefix, and `--generated` tokens (measured in this run)."""
    from worker.llm.batched import BatchedEngine
    from worker.llm.model_files import ModelFile

    engine = BatchedEngine(
        ModelFile("bench", model, None),
        EngineOptions(n_ctx=256, n_threads=1),
        BatchOptions(parallel=1, prefix_cache=False),
        verify=False,
    )
    try:
        docs = load.documents(args.count)
        prefix = len(engine.tokenize(load.shared_prefix))
        computed = [len(engine.tokenize(load.prompt(d))) - prefix for d in docs]
    finally:
        engine.close()
    shape = Shape(round(statistics.mean(computed)), round(args.generated), args.parallel)
    return batched_bench(model, shape, args.threads, args.server_repack)


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """Run one method in this process; returns its figures as JSON-able data."""
    model = model_path()
    method = args.one
    if method == "llama-bench":
        return llama_bench(model, args.threads, args.server_repack)
    if method == "repack-probe":
        return {"repack": probe_repack(model).repack, "reason": probe_repack(model).reason}
    if method.startswith("extra:"):
        # model and threads only: each module keeps its own sizes (parallel, jobs)
        known = {"model": model, "threads": args.threads}
        return run_extra(method.split(":", 1)[1], known)
    if method.startswith("ceiling:"):
        return ceiling(model, workload(method.split(":", 1)[1]), args)
    label, name = METHODS[method]
    load = workload(name)
    docs = load.documents(args.count)
    if method == "loop":
        return plain_loop(model, docs, args.threads, args.n_ctx, args.engine_repack).__dict__
    if method.startswith("server"):
        return server_run(model, load, docs, args).__dict__
    if method.startswith("daemon"):
        return daemon_run(model, load, docs, args).__dict__
    changes = {"parallel": args.parallel, "repack_weights": args.engine_repack}
    changes.update(ENGINE_VARIANTS[method])
    changes.update(json.loads(args.variant or "{}"))  # bench/ab.py's A or B
    batch = BatchOptions(**changes)
    lengths = json.loads(args.lengths) if method == "engine-json-nogrammar" else None
    options = EngineOptions(n_ctx=args.n_ctx, n_threads=args.threads)
    return engine_alone(model, load, docs, options, batch, label, lengths).__dict__


def in_subprocess(method: str, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """`measure_one` in a fresh Python process (llama.cpp reads kernel switches once)."""
    name = METHODS.get(method, ("", "summary"))[1]
    count = {"summary": args.jobs, "json": args.json_jobs, "incidents": args.incident_jobs}
    if method.startswith("ceiling:"):
        name = method.split(":", 1)[1]
    command = [
        sys.executable, __file__, "--one", method,
        "--count", str(count[name]),
        "--parallel", str(args.parallel),
        "--threads", str(args.threads),
        "--n-ctx", str(args.n_ctx),
        "--server-repack", str(int(args.server_repack)),
        "--engine-repack", str(int(args.engine_repack)),
    ]  # fmt: skip
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_TILED_MM"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench method {method} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bar_chart(medians: dict[str, dict[str, Any]], path: Path) -> None:
    """Jobs/s of each method, by workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in METHODS if m in medians]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.5))
    values = [medians[m]["jobs_per_s"] for m in names]
    bars = ax.barh([medians[m]["method"] for m in names], values)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("jobs/s (median of runs; higher is better)")
    ax.set_title("Gemma 3 270M Q4_K_M on 2 CPU cores: edge-worker vs llama-server")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=32, help="summary workload size")
    parser.add_argument("--json-jobs", type=int, default=64, help="json workload size")
    parser.add_argument("--incident-jobs", type=int, default=32, help="incidents workload size")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--skip", default="", help="comma list of methods, workloads, extras")
    parser.add_argument("--with", dest="also", default="", help="optional methods to add")
    parser.add_argument("--no-ceiling", action="store_true", help="skip llama-batched-bench")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--server-repack", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--engine-repack", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--lengths", default="", help=argparse.SUPPRESS)
    parser.add_argument("--generated", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # `jobs` etc. stay as given; --count is what one subprocess measures
    args.count = args.count or args.jobs
    return args


def run_all(args: argparse.Namespace, methods: list[str], results: dict[str, Any]) -> None:
    runs: dict[str, list[Figures]] = {m: [] for m in methods}
    ceilings: dict[str, list[dict[str, Any]]] = {}
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        for method in methods:
            extra: dict[str, Any] = {}
            if method == "engine-json-nogrammar":
                if not runs.get("engine-json"):
                    continue
                extra["lengths"] = json.dumps(runs["engine-json"][-1].per_job_tokens)
            figures = Figures(**in_subprocess(method, args, **extra))
            runs[method].append(figures)
            print(f"  {METHODS[method][0]:<30}", figures.summary(), flush=True)
            if figures.engine:
                print(f"  {'':<30} engine counts {figures.engine}", flush=True)
        if not args.no_ceiling:
            for name in {METHODS[m][1] for m in methods}:
                measured = [runs[m][-1] for m in methods if METHODS[m][1] == name and runs[m]]
                per_job = statistics.median(f.generated_tokens / f.jobs for f in measured)
                row = in_subprocess(f"ceiling:{name}", args, generated=per_job)
                ceilings.setdefault(name, []).append(row)
                print(f"  {'(k) ceiling ' + name:<30} {row}", flush=True)
    medians = {k: median_of(v) for k, v in runs.items() if v}
    results["medians"] = medians
    results["runs"] = {k: [r.summary() for r in v] for k, v in runs.items()}
    results["engine_counts"] = {k: [r.engine for r in v] for k, v in runs.items() if v[0].engine}
    results["ceilings"] = ceilings
    report(args, medians, ceilings, results)


def report(
    args: argparse.Namespace,
    medians: dict[str, dict[str, Any]],
    ceilings: dict[str, list[dict[str, Any]]],
    results: dict[str, Any],
) -> None:
    print("\nmedians of", args.runs, "runs:")
    ceiling_jobs = {
        name: statistics.median(r["jobs_per_s"] for r in rows) for name, rows in ceilings.items()
    }
    results["ceiling_jobs_per_s"] = ceiling_jobs
    for name, jobs in ceiling_jobs.items():
        print(f"  ceiling (llama-batched-bench), {name:<12} {jobs:.3f} jobs/s")
    for method, med in medians.items():
        share = ceiling_jobs.get(METHODS[method][1])
        print(
            f"  {med['method']:<44} {med['jobs_per_s']:.3f} jobs/s  "
            f"{med['generated_per_job']:.0f} tok/job  "
            f"p50 {med['p50_latency_s']} s  p95 {med['p95_latency_s']} s"
            + (f"  {med['jobs_per_s'] / share:.0%} of ceiling" if share else "")
            + (f"  peak RSS {med['peak_rss_mb']} MB" if med.get("peak_rss_mb") else "")
        )
    ratios: dict[str, float] = {}
    for top, bottom, label in RATIOS:
        if top in medians and bottom in medians:
            ratio = medians[top]["jobs_per_s"] / medians[bottom]["jobs_per_s"]
            ratios[label] = round(ratio, 3)
            print(f"  ratio {label}: {ratio:.2f}x")
    results["ratios"] = ratios


def main() -> int:
    args = parse_args()
    if args.one:
        args.server_repack, args.engine_repack = bool(args.server_repack), bool(args.engine_repack)
        print(json.dumps(measure_one(args)))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    also = set(filter(None, args.also.split(",")))
    methods = [
        m
        for m in METHODS
        if m not in skip and METHODS[m][1] not in skip and (m not in OPTIONAL or m in also)
    ]
    server_binary()  # built once, before anything is timed (with the ceiling's tools)
    model = model_path()
    args.server_repack, why = server_repack_works(model, ServerOptions(2, args.threads, 512))
    print(f"llama-server: {'its defaults' if args.server_repack else '--no-repack'} ({why})")
    probe = in_subprocess("repack-probe", args)
    args.engine_repack = bool(probe["repack"])
    print(f"engine: repacked weights {'on' if args.engine_repack else 'off'} ({probe['reason']})")
    results: dict[str, Any] = {
        "jobs": args.jobs,
        "json_jobs": args.json_jobs,
        "incident_jobs": args.incident_jobs,
        "max_tokens": MAX_TOKENS,
        "parallel": args.parallel,
        "threads": args.threads,
        "llama_cpp_python": llama_cpp_version(),
        "server_repack": args.server_repack,
        "server_repack_reason": why,
        "engine_repack": probe,
    }
    if not args.no_ceiling:
        results["llama_bench"] = in_subprocess("llama-bench", args)
        print(f"llama-bench: {results['llama_bench']}", flush=True)
    run_all(args, methods, results)
    extras: dict[str, Any] = {}
    for topic in available():
        if topic not in skip:
            print(f"extra: {topic} ({EXTRAS[topic]})", flush=True)
            extras[topic] = in_subprocess(f"extra:{topic}", args)
    if extras:
        print("\nother figures:")
        for topic, figures in extras.items():
            print(format_row(topic, figures))
    results["extras"] = extras

    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    bar_chart(results["medians"], out_dir / "throughput.png")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote bench/results/{stamp}.json and bench/results/throughput.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
