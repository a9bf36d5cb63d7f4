"""The bench's workloads and the methods that run inside the bench's own process.

Workloads (the same prompt text for every method):
  summary:   32 reports (bench/workload.py) behind one shared instruction, at most 128
             tokens each, temperature 0;
  json:      64 reports through the shipped `extract` pipeline (a JSON Schema grammar);
  incidents: 32 longer incident reports behind another instruction, at most 48 tokens
             (the second workload: another seed and template, that nothing was tuned on).
"""

from __future__ import annotations

import queue
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.daemon_run import summary_pipeline
from bench.proc import status_mb
from bench.workload import (
    INCIDENT_INSTRUCTION,
    INCIDENT_SUFFIX,
    INSTRUCTION,
    SHORT_MAX_TOKENS,
    SUFFIX,
    documents,
    incident_documents,
    incident_prompt,
    prompt,
)
from worker.config import SHIPPED_PIPELINES_DIR
from worker.llm.batched import BatchedEngine, BatchOptions
from worker.llm.engine import EngineOptions
from worker.llm.generation import Generation
from worker.llm.model_files import ModelFile
from worker.pipelines.spec import Pipeline, load_pipelines

MAX_TOKENS = 128
GREEDY = Generation(max_tokens=MAX_TOKENS, temperature=0, repeat_penalty=1.0)
_SENTINEL = "\x00INPUT\x00"


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
    per_job_tokens: list[int] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)  # EngineStats, for the profile

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
            "generated_per_job": round(self.generated_tokens / self.jobs, 1),
            "p50_latency_s": round(statistics.median(lat), 2),
            "p95_latency_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2),
            "peak_rss_mb": self.peak_rss_mb,
            "seconds": round(self.seconds, 1),
        }


@dataclass(frozen=True)
class Workload:
    """What the jobs are: documents, the prompt around them, limits and the daemon's pipeline."""

    name: str
    documents: Callable[[int], list[str]]
    prompt: Callable[[str], str]
    shared_prefix: str
    generation: Generation
    daemon_pipeline: Callable[[Path], Path]  # writes a pipelines folder, returns it
    suffix: str  # the daemon's output files' extension


def extract_pipeline() -> Pipeline:
    return load_pipelines(SHIPPED_PIPELINES_DIR)["extract"]


def _summary_folder(tmp: Path) -> Path:
    """A pipelines folder whose `bench.toml` renders exactly `bench.workload.prompt`."""
    folder = tmp / "summary"
    folder.mkdir()
    (folder / "bench.toml").write_text(summary_pipeline(MAX_TOKENS))
    return folder


def _json_folder(tmp: Path) -> Path:
    """A pipelines folder whose `bench.toml` is the shipped `extract` pipeline."""
    folder = tmp / "json"
    shutil.copytree(SHIPPED_PIPELINES_DIR / "schemas", folder / "schemas")
    (folder / "bench.toml").write_text((SHIPPED_PIPELINES_DIR / "extract.toml").read_text())
    return folder


def _incidents_folder(tmp: Path) -> Path:
    folder = tmp / "incidents"
    folder.mkdir()
    (folder / "bench.toml").write_text(
        "description = 'benchmark: short answers about long incident reports'\n"
        "output_format = 'markdown'\n"
        f"prompt = '''{INCIDENT_INSTRUCTION}{{{{ input }}}}{INCIDENT_SUFFIX}'''\n"
        "[generation]\n"
        f"max_tokens = {SHORT_MAX_TOKENS}\ntemperature = 0.0\nrepeat_penalty = 1.0\n"
    )
    return folder


def _json_workload() -> Workload:
    pipeline = extract_pipeline()
    generation = pipeline.generation.model_copy(update={"json_schema": pipeline.json_schema})
    return Workload(
        "json",
        lambda n: documents(n),
        pipeline.render,
        pipeline.render(_SENTINEL).split(_SENTINEL)[0],
        generation,
        _json_folder,
        ".json",
    )


def workload(name: str) -> Workload:
    """The workload called `name`: summary, json or incidents."""
    if name == "summary":
        return Workload("summary", documents, prompt, INSTRUCTION, GREEDY, _summary_folder, ".md")
    if name == "json":
        return _json_workload()
    if name == "incidents":
        short = Generation(max_tokens=SHORT_MAX_TOKENS, temperature=0, repeat_penalty=1.0)
        return Workload(
            "incidents",
            incident_documents,
            incident_prompt,
            INCIDENT_INSTRUCTION,
            short,
            _incidents_folder,
            ".md",
        )
    raise ValueError(f"unknown workload {name}")


assert SUFFIX  # the summary prompt's suffix comes with `prompt`


def plain_loop(model: Path, docs: list[str], threads: int, n_ctx: int, repack: bool) -> Figures:
    """(a) What every user writes first: one Llama, a loop over create_completion."""
    import llama_cpp.llama_cpp as bindings
    from llama_cpp import Llama

    # Extra weight buffers as the probe decided for the others (they may crash on AMX).
    # Llama reads its defaults from the bindings module, not the package's re-export:
    # patching `llama_cpp.llama_model_default_params` changed nothing (the loop crashed
    # with SIGSEGV on a machine reporting AMX).
    defaults = bindings.llama_model_default_params

    def model_params() -> Any:
        params = defaults()
        params.use_extra_bufts = repack
        return params

    bindings.llama_model_default_params = model_params
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
    load: Workload,
    docs: list[str],
    options: EngineOptions,
    batch: BatchOptions,
    name: str,
    lengths: list[int] | None = None,
) -> Figures:
    """The batched engine fed by `parallel` callers, as the runner's slots do.

    `lengths`: each job's max_tokens (the json workload without its grammar generates as
    many tokens per job as it did with it) and no JSON Schema.
    """
    engine = BatchedEngine(ModelFile("bench", model, None), options, batch)
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(docs)):
        todo.put(i)
    latencies: list[float] = []
    per_job = [0] * len(docs)
    totals = {"prompt": 0, "generated": 0}
    lock = threading.Lock()

    def slot() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            generation = load.generation
            if lengths is not None:
                update = {"json_schema": None, "max_tokens": max(1, lengths[i])}
                generation = generation.model_copy(update=update)
            t0 = time.monotonic()
            done = engine.complete(
                load.prompt(docs[i]), generation, lambda: False, load.shared_prefix
            )
            with lock:
                latencies.append(time.monotonic() - t0)
                per_job[i] = done.completion_tokens
                totals["prompt"] += done.prompt_tokens
                totals["generated"] += done.completion_tokens

    started = time.monotonic()
    workers = [threading.Thread(target=slot) for _ in range(batch.parallel)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.monotonic() - started
    stats = engine.stats
    engine.close()
    counts = {k: v for k, v in stats.__dict__.items() if k != "grammar"}
    counts["grammar"] = dict(stats.grammar.__dict__)
    return Figures(
        name,
        seconds,
        len(docs),
        totals["prompt"],
        totals["generated"],
        latencies,
        status_mb("self", "VmHWM"),
        stats.prompt_tokens_evaluated,
        stats.prompt_tokens_reused,
        per_job,
        counts,
    )


def median_of(runs: list[Figures]) -> dict[str, Any]:
    summaries = [r.summary() for r in runs]
    keys = [k for k in summaries[0] if k != "method"]
    merged: dict[str, Any] = {"method": summaries[0]["method"], "runs": len(runs)}
    for key in keys:
        values = [s[key] for s in summaries if s[key] is not None]
        merged[key] = statistics.median(values) if values else None
    return merged
