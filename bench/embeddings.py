"""Embeddings/s: edge-worker end to end against llama.cpp's llama-server `/v1/embeddings`,
on the same texts in the same run.

- (s) llama-server with `--embeddings --pooling mean`, built from the llama.cpp that
  llama-cpp-python vendors (bench/llama_server.py, its build cache), `-np` parallel,
  one `/v1/embeddings` request per text from as many clients as slots; once as it
  comes, once with `-kvu` (one KV buffer: its vectors then match a text sent alone);
- (e) the embedding engine alone, with llama.cpp's whole graph and with the graph cut
  (worker/llm/graph_cut.py), the same texts from as many callers as slots: what the cut
  buys, measured in the same run;
- (d) a real `edge-worker run` daemon whose model table has the Gemma GGUF a second
  time as `kind = "embed"` (mean pooling): the texts as one JSON Lines records file
  dropped into an embedding pipeline, timed from the drop to the written
  `<name>.embeddings.jsonl`.

Both use the same threads, slots and context per input; the texts are the benchmark
reports (bench/workload.py) cut to fit the context. The vectors of both are compared
(cosine), so a fast wrong answer does not count.

    python bench/embeddings.py [--texts 64] [--parallel 8] [--threads 2] [--n-ctx 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.llama_server import (  # noqa: E402
    ServerOptions,
    in_parallel,
    running_server,
    server_repack_works,
)
from bench.workload import documents  # noqa: E402

EDGE_WORKER = str(Path(sys.executable).parent / "edge-worker")
# About 4 characters a token in these reports: texts of 60-300 tokens fit n_ctx 512.
MAX_CHARS = 1200


def texts(count: int) -> list[str]:
    """`count` report texts of about 60 to 300 tokens."""
    return [doc[: 240 + (i * 97) % (MAX_CHARS - 240)] for i, doc in enumerate(documents(count))]


def server_embeddings(
    model: Path,
    inputs: list[str],
    parallel: int,
    threads: int,
    n_ctx: int,
    unified: bool = False,
    repack: bool = True,
) -> tuple[float, list[np.ndarray]]:
    """Seconds for llama-server to embed every text (one request each), and the vectors.

    `unified`: one KV buffer for all slots (`-kvu`). By default each slot has its own
    stream, and llama.cpp then splits a batch of sequences of different lengths into
    equal-length micro-batches: a sequence's pooled vector comes from its last piece
    only, so vectors depend on what was batched beside them (measured: cosine down to
    0.945 against the same text sent alone, on 8 slots).
    """
    extra = ["--embeddings", "--pooling", "mean", "-b", str(n_ctx), "-ub", str(n_ctx)]
    if unified:
        extra.append("-kvu")
    options = ServerOptions(
        parallel=parallel, threads=threads, n_ctx=n_ctx, extra=extra, repack=repack
    )
    with running_server(model, options) as (base, _pid):

        def embed(index: int) -> np.ndarray:
            body = json.dumps({"input": inputs[index], "model": "gemma"}).encode()
            request = urllib.request.Request(
                f"{base}/v1/embeddings", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=600) as response:
                answer = json.loads(response.read())
            return np.asarray(answer["data"][0]["embedding"], dtype=np.float32)

        seconds, vectors = in_parallel(len(inputs), parallel, embed)
    if any(v is None for v in vectors):
        raise RuntimeError("llama-server left texts without an embedding")
    return seconds, [v for v in vectors if v is not None]


def engine_embeddings(
    model: Path, inputs: list[str], parallel: int, threads: int, n_ctx: int, graph_cut: bool
) -> tuple[float, list[np.ndarray], bool]:
    """The embedding engine alone, `parallel` callers taking one text at a time as the
    daemon's slots do: seconds, the vectors, and whether the graph cut was on."""
    from worker.llm.embedding import EmbeddingEngine, EmbeddingOptions
    from worker.llm.engine import EngineOptions
    from worker.llm.model_files import ModelFile

    engine = EmbeddingEngine(
        ModelFile("emb", model, None),
        EngineOptions(n_ctx=n_ctx, n_threads=threads),
        EmbeddingOptions(n_ctx=n_ctx, n_batch=max(512, n_ctx), pooling="mean", graph_cut=graph_cut),
        verify=False,
    )
    try:
        seconds, vectors = in_parallel(
            len(inputs),
            parallel,
            lambda i: engine.embed([inputs[i]], lambda: False).vectors[0],
        )
    finally:
        engine.close()
    return seconds, [v for v in vectors if v is not None], engine.graph_cut


def daemon_embeddings(
    model: Path, inputs: list[str], parallel: int, threads: int, n_ctx: int
) -> tuple[float, list[np.ndarray]]:
    """Seconds from dropping the records file to its written output, and the vectors."""
    with tempfile.TemporaryDirectory(prefix="ew-bench-embed-") as tmp:
        root = Path(tmp)
        pipelines = root / "pipelines"
        pipelines.mkdir()
        (pipelines / "embed.toml").write_text('model = "emb"\n')
        config = root / "config.toml"
        config.write_text(f'[models.emb]\npath = "{model}"\nkind = "embed"\npooling = "mean"\n')
        data = root / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
        env.update(
            EDGE_WORKER_CONFIG=str(config),
            EDGE_WORKER_DATA_DIR=str(data),
            EDGE_WORKER_MODELS_DIR=str(model.parent),
            EDGE_WORKER_PIPELINES_DIR=str(pipelines),
            EDGE_WORKER_PARALLEL=str(parallel),
            EDGE_WORKER_N_THREADS=str(threads),
            EDGE_WORKER_N_CTX=str(n_ctx),
            EDGE_WORKER_SETTLE_SECONDS="0.2",
            EDGE_WORKER_POLL_INTERVAL="0.05",
            EDGE_WORKER_LOG_FORMAT="json",
        )
        log_path = root / "daemon.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([EDGE_WORKER, "run"], env=env, stdout=log, stderr=log)
            try:
                _wait_ready(proc, log_path)
                inbox = data / "inbox" / "embed"
                lines = "".join(
                    json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(inputs)
                )
                (inbox / ".texts.jsonl.part").write_text(lines)
                started = time.monotonic()
                (inbox / ".texts.jsonl.part").rename(inbox / "texts.jsonl")
                output = data / "outbox" / "embed" / "texts.jsonl.embeddings.jsonl"
                deadline = started + 1800
                while not output.exists():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(log_path.read_text()[-3000:])
                    time.sleep(0.02)
                seconds = time.monotonic() - started
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        rows = [json.loads(line) for line in output.read_text().splitlines()]
    if any(row["embedding"] is None for row in rows):
        raise RuntimeError(f"the daemon failed records: {[r for r in rows if 'error' in r][:3]}")
    return seconds, [np.asarray(row["embedding"], dtype=np.float32) for row in rows]


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 180
    while b'"daemon.ready"' not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log_path.read_text()[-3000:])
        time.sleep(0.1)


def measure(
    model: Path, count: int = 64, parallel: int = 8, threads: int = 2, n_ctx: int = 512
) -> dict[str, Any]:
    """Embeddings/s of llama-server (its default, and with one unified KV buffer, whose
    vectors do not depend on the batch) and of the daemon on the same texts, the ratios,
    and how close the vectors are (cosine, the worst text).

    llama-server runs with its defaults (repacked weights) unless they crash here (AMX
    machines: a general protection fault at the first decode), then `--no-repack`."""
    inputs = texts(count)
    repack, why = server_repack_works(model, ServerOptions(2, threads, n_ctx))
    server_s, server_vectors = server_embeddings(
        model, inputs, parallel, threads, n_ctx, repack=repack
    )
    unified_s, unified_vectors = server_embeddings(
        model, inputs, parallel, threads, n_ctx, unified=True, repack=repack
    )
    daemon_s, daemon_vectors = daemon_embeddings(model, inputs, parallel, threads, n_ctx)
    # The same run's attribution: the engine alone with llama.cpp's whole graph and cut.
    whole_s, whole_vectors, _ = engine_embeddings(model, inputs, parallel, threads, n_ctx, False)
    cut_s, cut_vectors, cut_on = engine_embeddings(model, inputs, parallel, threads, n_ctx, True)
    return {
        "texts": count,
        "parallel": parallel,
        "threads": threads,
        "n_ctx": n_ctx,
        "server_repack": repack,
        "server_repack_reason": why,
        "llama_server_seconds": round(server_s, 2),
        "llama_server_per_s": round(count / server_s, 2),
        "llama_server_kvu_seconds": round(unified_s, 2),
        "llama_server_kvu_per_s": round(count / unified_s, 2),
        "edge_worker_seconds": round(daemon_s, 2),
        "edge_worker_per_s": round(count / daemon_s, 2),
        "engine_whole_graph_seconds": round(whole_s, 2),
        "engine_graph_cut_seconds": round(cut_s, 2),
        "engine_graph_cut_on": cut_on,
        "graph_cut_speedup": round(whole_s / cut_s, 3),
        "min_cosine_cut_vs_whole": _min_cosine(whole_vectors, cut_vectors),
        "ratio": round(server_s / daemon_s, 3),
        "ratio_kvu": round(unified_s / daemon_s, 3),
        "min_cosine": _min_cosine(server_vectors, daemon_vectors),
        "min_cosine_kvu": _min_cosine(unified_vectors, daemon_vectors),
    }


def _min_cosine(left: list[np.ndarray], right: list[np.ndarray]) -> float:
    cosines = [
        float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(left, right, strict=True)
    ]
    return round(min(cosines), 6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--n-ctx", type=int, default=512)
    args = parser.parse_args()
    model = args.model or Path(
        os.environ.get(
            "EDGE_WORKER_TEST_MODEL", REPO / "var" / "models" / "gemma-3-270m-q4_k_m.gguf"
        )
    )
    result = measure(model, args.texts, args.parallel, args.threads, args.n_ctx)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
