"""Can the output layer be skipped exactly? A study, not a `make bench` row.

A generated token's row costs the output layer (Gemma 3 270M: 262,144 rows of 640, Q8_0,
tied to the token embedding) on top of what a prompt token costs; on an AVX2-only machine
that layer is about two thirds of the row. Greedy decoding only needs the layer's argmax,
so this measures, on hidden states at generated positions of real summary jobs:

- how many vocabulary rows survive an exact upper bound built from a rank-k projection
  (PCA of the rows) plus Cauchy-Schwarz on the residual: a row whose bound is below the
  best exact score cannot win, so only the survivors need their dot product;
- how fast a dense float32 product (numpy's BLAS) does the whole layer, per row, at the
  batch sizes of a decode call.

    .venv/bin/python bench/output_layer.py [--jobs 6] [--tokens 64]

Loads the model twice (generation, then per-token embeddings) and holds a float32 copy of
the layer (671 MB) and its temporaries (2.5-3 GB at the peak): run it alone on the
machine. Findings: docs/performance.md, round 4.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.methods import workload  # noqa: E402
from worker.llm.gguf import read_header  # noqa: E402

Q8_0_BLOCK = 32  # values per block; each block is an f16 scale and 32 int8
Q8_0_TYPE = 8


def model_path() -> Path:
    default = REPO / "var/models/gemma-3-270m-q4_k_m.gguf"
    return Path(os.environ.get("EDGE_WORKER_TEST_MODEL", default))


def output_layer(model: Path) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The tied output layer (token_embd.weight), dequantized from Q8_0: (vocab, embd)."""
    header = read_header(model)
    tensor = header.tensor("token_embd.weight")
    if tensor is None or tensor.ggml_type != Q8_0_TYPE:
        raise SystemExit("this study reads a Q8_0 token_embd.weight (Gemma 3 270M Q4_K_M)")
    n_embd, n_vocab = tensor.shape
    blocks_per_row = n_embd // Q8_0_BLOCK
    size = n_vocab * blocks_per_row * (2 + Q8_0_BLOCK)  # nbytes may include padding
    raw = np.memmap(model, np.uint8, "r", header.data_offset + tensor.offset, (size,))
    blocks = raw.reshape(n_vocab, blocks_per_row, 2 + Q8_0_BLOCK)
    scales = blocks[:, :, :2].copy().view(np.float16).astype(np.float32)
    values = blocks[:, :, 2:].copy().view(np.int8).astype(np.float32)
    return (values * scales).reshape(n_vocab, n_embd)


def hidden_states(model: Path, jobs: int, tokens: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Final-norm hidden states at the positions that predicted each generated token of
    `jobs` greedy summary jobs (the vectors the output layer multiplies)."""
    import llama_cpp

    load = workload("summary")
    docs = load.documents(jobs)
    generator = llama_cpp.Llama(str(model), n_ctx=2048, n_threads=2, verbose=False)
    texts = []
    for doc in docs:
        prompt = load.prompt(doc)
        done: Any = generator.create_completion(prompt, max_tokens=tokens, temperature=0)
        texts.append((prompt, str(done["choices"][0]["text"])))
    del generator
    embedder = llama_cpp.Llama(
        str(model),
        n_ctx=2048,
        n_batch=2048,
        n_ubatch=2048,
        n_threads=2,
        embedding=True,
        pooling_type=0,  # none: one vector per token
        verbose=False,
    )
    found = []
    for prompt, answer in texts:
        n_prompt = len(embedder.tokenize(prompt.encode()))
        n_all = len(embedder.tokenize((prompt + answer).encode()))
        vectors = np.asarray(embedder.embed(prompt + answer, normalize=False), np.float32)
        found.append(vectors[n_prompt - 1 : n_all - 1])
    return np.concatenate(found)


def pruning(
    layer: np.ndarray[Any, np.dtype[np.float32]],
    states: np.ndarray[Any, np.dtype[np.float32]],
    ranks: tuple[int, ...],
) -> None:
    """Print how many rows survive the rank-k bound for each k."""
    scores = states @ layer.T
    best = scores.max(axis=1)
    ordered = np.sort(scores, axis=1)
    norms = np.linalg.norm(layer, axis=1)
    print(f"{len(states)} hidden states, |h| mean {np.linalg.norm(states, axis=1).mean():.1f}")
    margin = (ordered[:, -1] - ordered[:, -2]).mean()
    print(
        f"top score mean {best.mean():.1f}, margin to the second {margin:.2f}, "
        f"median score {np.median(scores):.2f}; row norms {norms.min():.3f}-{norms.max():.3f}"
    )
    _, vectors = np.linalg.eigh(layer.T @ layer)
    vectors = vectors[:, ::-1]
    for k in ranks:
        basis = vectors[:, :k]
        rows_k = layer @ basis
        rows_rest = np.linalg.norm(layer - rows_k @ basis.T, axis=1)
        states_k = states @ basis
        states_rest = np.linalg.norm(states - states_k @ basis.T, axis=1)
        bound = states_k @ rows_k.T + states_rest[:, None] * rows_rest[None, :]
        survivors = (bound >= best[:, None]).sum(axis=1)
        share = np.mean(states_rest / np.linalg.norm(states, axis=1))
        print(
            f"k={k}: rows that survive the bound, median {np.median(survivors):.0f} of "
            f"{len(layer)} (p90 {np.percentile(survivors, 90):.0f}); |h| outside the "
            f"top {k} directions {share:.0%}"
        )


def dense_speed(layer: np.ndarray[Any, np.dtype[np.float32]], batches: tuple[int, ...]) -> None:
    """Print the float32 product's time per row at each batch size (best of 5)."""
    rng = np.random.default_rng(0)
    for rows in batches:
        states = rng.standard_normal((rows, layer.shape[1]), dtype=np.float32)
        out = np.empty((rows, layer.shape[0]), np.float32)
        np.matmul(states, layer.T, out=out)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            np.matmul(states, layer.T, out=out)
            times.append(time.perf_counter() - started)
        ms = min(times) * 1000
        print(f"dense float32, {rows} rows: {ms:.1f} ms, {ms / rows:.2f} ms a row")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    model = model_path()
    states = hidden_states(model, args.jobs, args.tokens)
    layer = output_layer(model)
    pruning(layer, states, (32, 64, 128, 256))
    dense_speed(layer, (1, 8, 16, 40))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
