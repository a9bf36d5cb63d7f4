"""Interleaved A/B runs of the engine alone: one change, medians and ratios, with counts.

On a shared machine a single run says little (the same configuration moves by 10-20%
within minutes), so this alternates A and B `--repeats` times, each run in a process of
its own (bench/run.py --one), and prints the median jobs/s of each with the ratio, and the
noise-free counts of each run (decode calls, rows with logits, drafts accepted, grammar
fallbacks). Run it under the model lock:

    flock /tmp/edge-worker-model.lock .venv/bin/python bench/ab.py engine \\
        --b '{"speculate": 0}' --count 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUN = str(REPO / "bench" / "run.py")
COUNTS = (
    "decode_calls",
    "calls_running_only",
    "running_tokens",
    "draft_tokens",
    "draft_tokens_accepted",
    "sample_seconds",
)


def one(method: str, count: int, variant: dict[str, Any], repack: bool) -> dict[str, Any]:
    """One engine run of `method` with the BatchOptions changes in `variant`."""
    command = [sys.executable, RUN, "--one", method, "--count", str(count)]
    flag = str(int(repack))
    command += ["--server-repack", flag, "--engine-repack", flag, "--variant", json.dumps(variant)]
    env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_TILED_MM"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", help="an engine method of bench/run.py: engine, engine-json...")
    parser.add_argument("--a", default="{}", help="BatchOptions changes of A (JSON)")
    parser.add_argument("--b", default="{}", help="BatchOptions changes of B (JSON)")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repack", action="store_true", help="repacked weights (if they work)")
    args = parser.parse_args()
    variants = {"A": json.loads(args.a), "B": json.loads(args.b)}
    jobs: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(args.repeats):
        for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
            found = one(args.method, args.count, variants[name], args.repack)
            jobs[name].append(found["jobs"] / found["seconds"])
            counts = {k: round(found["engine"][k], 2) for k in COUNTS}
            grammar = found["engine"]["grammar"]
            print(
                f"{name} {variants[name]} {jobs[name][-1]:.4f} jobs/s, "
                f"{found['generated_tokens']} tokens, {counts}, "
                f"grammar whole-vocabulary {grammar['whole_vocabulary']}",
                flush=True,
            )
    a, b = statistics.median(jobs["A"]), statistics.median(jobs["B"])
    print(f"median A {a:.4f}, B {b:.4f} jobs/s; B/A {b / a:.3f} ({args.repeats} runs each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
