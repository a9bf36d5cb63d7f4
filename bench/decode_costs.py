"""What one `llama_decode` call costs, by shape: the cost model behind the engine's schedule.

The engine's throughput is the sum of its decode calls, so the questions that decide its
schedule are: what does a call of R running tokens (one per sequence, each with logits)
cost, what does a prompt chunk of P tokens (no logits) add to it, and what do extra rows
with logits (speculative drafts) cost. This loads the model with the engine's context
settings (flash attention auto, one KV stream per sequence), fills `sequences`
sequences with `context` tokens each, and times calls of each shape, interleaved, the
median of `repeats`. Every call's tokens are removed from the cache after it, so each
shape sees the same context.

    python bench/decode_costs.py --model var/models/gemma-3-270m-q4_k_m.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.workload import documents, prompt  # noqa: E402

# (label, running sequences, draft rows per running sequence, prompt tokens without logits)
SHAPES = (
    ("1 running", 1, 0, 0),
    ("2 running", 2, 0, 0),
    ("4 running", 4, 0, 0),
    ("8 running", 8, 0, 0),
    ("16 running", 16, 0, 0),
    ("8 running + 4 drafts each", 8, 4, 0),
    ("1 running + 7 drafts", 1, 7, 0),
    ("64 prompt", 0, 0, 64),
    ("8 running + 64 prompt", 8, 0, 64),
    ("256 prompt", 0, 0, 256),
    ("8 running + 256 prompt", 8, 0, 256),
    ("504 prompt", 0, 0, 504),
    ("8 running + 504 prompt", 8, 0, 504),
)


def measure(
    model: Path,
    threads: int = 2,
    sequences: int = 17,
    context: int = 600,
    repeats: int = 3,
    repack: bool = False,
    cpu: bool = False,
) -> dict[str, Any]:
    """Median seconds of a decode call of each shape in SHAPES."""
    import llama_cpp as ll

    quiet = ll.llama_log_callback(lambda *_: None)  # kept alive while llama.cpp may log
    ll.llama_log_set(quiet, None)
    ll.llama_backend_init()
    mparams = ll.llama_model_default_params()
    mparams.use_extra_bufts = repack
    mdl = ll.llama_model_load_from_file(str(model).encode(), mparams)
    vocab = ll.llama_model_get_vocab(mdl)
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = 2048 * sequences
    cparams.n_seq_max = sequences
    cparams.n_batch = cparams.n_ubatch = 512
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.kv_unified = False
    cparams.swa_full = True
    cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_AUTO
    ctx = ll.llama_init_from_model(mdl, cparams)
    mem = ll.llama_get_memory(ctx)
    batch = ll.llama_batch_init(1024, 0, 1)
    text = prompt(documents(1, seed=5)[0]).encode()
    buf = (ll.llama_token * (len(text) + 16))()
    n = ll.llama_tokenize(vocab, text, len(text), buf, len(text) + 16, True, False)
    tokens = [buf[i % n] for i in range(context + 600)]

    def add(token: int, pos: int, seq: int, logits: bool) -> None:
        i = batch.n_tokens
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
        batch.n_tokens = i + 1

    # Fill every sequence with `context` tokens (the last one is the prompt sequence's).
    for seq in range(sequences):
        for start in range(0, context, 512):
            batch.n_tokens = 0
            for pos in range(start, min(context, start + 512)):
                add(tokens[pos], pos, seq, False)
            ll.llama_decode(ctx, batch)

    def call(running: int, drafts: int, prompt_tokens: int) -> float:
        batch.n_tokens = 0
        for seq in range(running):
            for k in range(1 + drafts):
                add(tokens[context + k], context + k, seq, True)
        prompt_seq = sequences - 1
        for k in range(prompt_tokens):
            add(tokens[context + k], context + k, prompt_seq, k == prompt_tokens - 1)
        clock = time.process_time if cpu else time.perf_counter
        started = clock()
        ll.llama_decode(ctx, batch)
        seconds = clock() - started
        for seq in range(sequences):
            ll.llama_memory_seq_rm(mem, seq, context, -1)
        return seconds

    call(8, 0, 64)  # warm-up
    times: dict[str, list[float]] = {label: [] for label, *_ in SHAPES}
    for _ in range(repeats):
        for label, running, drafts, prompt_tokens in SHAPES:
            times[label].append(call(running, drafts, prompt_tokens))
    ll.llama_batch_free(batch)
    ll.llama_free(ctx)
    ll.llama_model_free(mdl)
    return {
        "threads": threads,
        "context": context,
        "repeats": repeats,
        "repack": repack,
        "clock": "process CPU time" if cpu else "wall",
        "ms": {label: round(1000 * statistics.median(v), 1) for label, v in times.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = REPO / "var/models/gemma-3-270m-q4_k_m.gguf"
    parser.add_argument(
        "--model", type=Path, default=Path(os.environ.get("EDGE_WORKER_TEST_MODEL", default_model))
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--context", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--repack", action="store_true")
    parser.add_argument(
        "--cpu", action="store_true", help="process CPU time, not wall (use with --threads 1)"
    )
    args = parser.parse_args()
    result = measure(
        args.model, args.threads, context=args.context, repeats=args.repeats, repack=args.repack
    )
    for label, ms in result["ms"].items():
        print(f"  {label:<28} {ms:8.1f} ms")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
