"""Two loaded models on one CPU: one decodes at a time (a shared lock, every core each),
or the cores are split between them (both decode at once). Issue #19 chose the split
(`worker.llm.loading.thread_share`) from these figures; notes/models.md has a run.

Two engines of the given GGUF (n_ctx 1024 and 2048, 2 slots each), `jobs` jobs each,
two client threads per engine; jobs/s for:
  split:  each engine `cores // 2` threads, no lock;
  lock:   each engine every core, one llama_decode at a time across both;
  single: one engine alone (every core), the same number of jobs, for reference.

    python bench/decode_threads.py --model var/models/gemma-3-270m-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.llm.batched import BatchedEngine, BatchOptions  # noqa: E402
from worker.llm.engine import EngineOptions  # noqa: E402
from worker.llm.generation import Generation  # noqa: E402
from worker.llm.model_files import ModelFile  # noqa: E402

GENERATION = Generation(max_tokens=24, temperature=0, repeat_penalty=1.0)


def _prompts(count: int) -> list[str]:
    return [
        f"Report {i}: the warehouse in town {i} shipped {i * 7} crates of apples and "
        f"{i * 3} crates of pears on day {i}. Summary:"
        for i in range(count)
    ]


def _rate(engines: list[BatchedEngine], per_engine: int) -> float:
    prompts = _prompts(per_engine * len(engines))
    done: list[int] = []

    def client(engine: BatchedEngine, mine: list[str]) -> None:
        for prompt in mine:
            engine.complete(prompt, GENERATION, lambda: False)
            done.append(1)

    threads = []
    for k, engine in enumerate(engines):
        chunk = prompts[k * per_engine : (k + 1) * per_engine]
        threads += [threading.Thread(target=client, args=(engine, chunk[c::2])) for c in (0, 1)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(done) / (time.monotonic() - started)


def _engines(model: Path, threads: int, contexts: tuple[int, ...]) -> list[BatchedEngine]:
    file = ModelFile("bench", model, None)
    return [
        BatchedEngine(file, EngineOptions(n_ctx=n, n_threads=threads), BatchOptions(parallel=2))
        for n in contexts
    ]


def _locked(engines: list[BatchedEngine]) -> None:
    """One llama_decode at a time across the engines (wraps their decode call)."""
    lock = threading.Lock()
    for engine in engines:
        decode = engine._decode

        def locked(decode: Any = decode) -> None:
            with lock:
                decode()

        engine._decode = locked  # type: ignore[method-assign]


def measure(model: Path, jobs: int = 12, rounds: int = 2) -> dict[str, Any]:
    """jobs/s of each arrangement, `rounds` times, alternating."""
    cores = os.cpu_count() or 1
    results: dict[str, list[float]] = {"split": [], "lock": [], "single": []}
    for _ in range(rounds):
        for name in results:
            if name == "single":
                engines = _engines(model, cores, (2048,))
            else:
                engines = _engines(
                    model, max(1, cores // 2) if name == "split" else cores, (1024, 2048)
                )
            if name == "lock":
                _locked(engines)
            try:
                _rate(engines, 2)  # warm-up
                per_engine = jobs if name != "single" else jobs * 2
                results[name].append(round(_rate(engines, per_engine), 3))
            finally:
                for engine in engines:
                    engine.close()
    return {"cores": cores, "jobs_per_engine": jobs, "jobs_per_s": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "var/models/gemma-3-270m-q4_k_m.gguf")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.jobs, args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
