"""(b) of the benchmark: a real `edge-worker run` daemon, files dropped into its inbox."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.proc import status_mb
from bench.workload import INSTRUCTION

EDGE_WORKER = str(Path(sys.executable).parent / "edge-worker")


def summary_pipeline(max_tokens: int) -> str:
    # The same prompt text as bench.workload.prompt(): instruction, report, "### Summary", "-".
    return (
        "description = 'benchmark summaries'\n"
        "output_format = 'markdown'\n"
        f"prompt = '''{INSTRUCTION}{{{{ input }}}}\n\n### Summary\n\n'''\n"
        "answer_prefix = '-'\n"
        "[generation]\n"
        f"max_tokens = {max_tokens}\ntemperature = 0.0\nrepeat_penalty = 1.0\n"
    )


def run_daemon_bench(
    model: Path,
    docs: list[str],
    parallel: int,
    threads: int,
    n_ctx: int,
    pipelines_from: Path,
    suffix: str,
    settings: dict[str, str] | None = None,
) -> tuple[float, list[float], int, int, float]:
    """Seconds from the first drop to the last result, job latencies, tokens, peak RSS (MB).

    `pipelines_from` is a pipelines folder holding `bench.toml` (and what it refers to);
    `suffix` is its outputs' extension.
    """
    with tempfile.TemporaryDirectory(prefix="ew-bench-") as tmp:
        root = Path(tmp)
        pipelines = root / "pipelines"
        shutil.copytree(pipelines_from, pipelines)
        data = root / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
        env.update(
            EDGE_WORKER_DATA_DIR=str(data),
            EDGE_WORKER_MODELS_DIR=str(model.parent),
            EDGE_WORKER_PIPELINES_DIR=str(pipelines),
            EDGE_WORKER_PARALLEL=str(parallel),
            EDGE_WORKER_N_THREADS=str(threads),
            EDGE_WORKER_N_CTX=str(n_ctx),
            EDGE_WORKER_SETTLE_SECONDS="0.2",
            EDGE_WORKER_LOG_FORMAT="json",
        )
        env.update(settings or {})
        log = (root / "daemon.log").open("wb")
        proc = subprocess.Popen([EDGE_WORKER, "run"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 120
            while b'"daemon.ready"' not in (root / "daemon.log").read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "daemon.log").read_text())
                time.sleep(0.1)
            inbox, outbox = data / "inbox" / "bench", data / "outbox" / "bench"
            started = time.monotonic()
            dropped: dict[str, float] = {}
            for i, doc in enumerate(docs):
                tmp_file = inbox / f".doc{i:03d}.txt.part"
                tmp_file.write_text(doc)
                tmp_file.rename(inbox / f"doc{i:03d}.txt")
                dropped[f"doc{i:03d}.txt{suffix}"] = time.time()
            while not outbox.is_dir() or len(list(outbox.glob(f"*{suffix}"))) < len(docs):
                if proc.poll() is not None:
                    raise RuntimeError((root / "daemon.log").read_text())
                time.sleep(0.05)
            seconds = time.monotonic() - started
            rss = status_mb(proc.pid, "VmHWM")
            # latency of a job: from its file's drop to its result's publication
            latencies = [(outbox / name).stat().st_mtime - at for name, at in dropped.items()]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
            log.close()
        with sqlite3.connect(data / "jobs.db") as conn:
            prompt_tokens, generated = conn.execute(
                "SELECT sum(prompt_tokens), sum(completion_tokens) FROM jobs"
            ).fetchone()
        return seconds, latencies, int(prompt_tokens), int(generated), rss
