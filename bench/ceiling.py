"""The kernels' ceiling at a workload's shape, and llama.cpp's own probes of the machine.

- `llama-batched-bench` (built beside llama-server from the same llama.cpp) decodes
  `parallel` sequences at once, each a prompt of PP tokens then TG generated tokens, with
  nothing else around it: no sampling beyond greedy logits, no grammar, no HTTP, no
  scheduling. PP is what each job really computes (its prompt after the shared prefix),
  TG what it really generates. Its jobs/s (`parallel` / its total time) is what these
  kernels do at this shape; every method's share of it says how much is left.
- `llama-bench` pp512 and tg128: prompt processing and single-sequence generation
  speeds, the figures users quote.
- `server_repack()`: whether llama-server can run with its defaults (repacked weights)
  on this machine: one short start and request; `--no-repack` only if that dies.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.llama_server import tool_binary


@dataclass(frozen=True)
class Shape:
    """What one job costs the kernels: prompt tokens computed, tokens generated."""

    prompt_tokens: int
    generated_tokens: int
    parallel: int


def repack_flag(repack: bool) -> list[str]:
    """llama.cpp tools' flag for the repack decision (their default is on)."""
    return [] if repack else ["--no-repack"]


def batched_bench(
    model: Path, shape: Shape, threads: int, repack: bool, timeout: float = 900
) -> dict[str, Any]:
    """One `llama-batched-bench` wave at `shape`; its figures and the ceiling in jobs/s."""
    pp, tg, pl = shape.prompt_tokens, max(1, shape.generated_tokens), shape.parallel
    command = [
        str(tool_binary("llama-batched-bench")),
        "-m",
        str(model),
        "-c",
        str(pl * (pp + tg) + 256),
        "-b",
        "2048",
        "-ub",
        "512",
        "-npp",
        str(pp),
        "-ntg",
        str(tg),
        "-npl",
        str(pl),
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "-fa",
        "auto",
        "--output-format",
        "jsonl",
        *repack_flag(repack),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        raise RuntimeError(f"llama-batched-bench failed:\n{done.stderr[-3000:]}")
    row = rows[-1]
    return {
        "prompt_tokens": pp,
        "generated_tokens": tg,
        "parallel": pl,
        "seconds": round(row["t"], 2),
        "prompt_seconds": round(row["t_pp"], 2),
        "generation_seconds": round(row["t_tg"], 2),
        "generation_tokens_per_s": round(row["speed_tg"], 1),
        "jobs_per_s": round(pl / row["t"], 4),
    }


def llama_bench(model: Path, threads: int, repack: bool, timeout: float = 600) -> dict[str, float]:
    """`llama-bench` pp512 and tg128 (tokens/s), 2 repetitions."""
    command = [
        str(tool_binary("llama-bench")),
        "-m",
        str(model),
        "-p",
        "512",
        "-n",
        "128",
        "-r",
        "2",
        "-t",
        str(threads),
        "-fa",
        "1",
        "--repack",
        "1" if repack else "0",
        "-o",
        "jsonl",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"llama-bench failed:\n{done.stderr[-3000:]}")
    found: dict[str, float] = {}
    for line in done.stdout.splitlines():
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        key = "pp512" if row.get("n_prompt") else "tg128"
        found[f"{key}_tokens_per_s"] = round(float(row["avg_ts"]), 1)
    return found
