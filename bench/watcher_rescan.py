"""CPU of one inbox rescan over a backlog of waiting files (issue 20, done-when 2).

Makes `files` small files in one inbox of a temp data folder, lets the real
`InboxWatcher` queue them all in a real SQLite job table (nothing claims them: they
wait, as a backlog does), then times `repeats` full rescans (`rescan_soon()` and a
tick, what the watcher does every `rescan_interval`). Reports the CPU seconds per
rescan (`time.process_time`), the wall time, and how many files were read and SQL
statements run during the rescans: none of either for unchanged files. Target: under
1 s of CPU per rescan over 20 000 waiting files. No model is loaded.

    .venv/bin/python bench/watcher_rescan.py [--files 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

import worker.sources.inbox as inbox
from worker.config import load_settings
from worker.io.safe_read import read_regular_file
from worker.queue.database import make_db_engine
from worker.queue.jobs import JobStore
from worker.queue.migrate import upgrade
from worker.sources.inbox import InboxWatcher

PIPELINE = "bench"
TARGET_CPU_SECONDS = 1.0


def _fill(folder: Path, files: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        (folder / f"doc-{index:06d}.txt").write_text(f"waiting document number {index}\n")


def measure(files: int = 20_000, repeats: int = 3) -> dict[str, Any]:
    """Queue `files` waiting files, then time `repeats` rescans; a dict of the results."""
    with tempfile.TemporaryDirectory(prefix="edge-worker-rescan-") as tmp:
        root = Path(tmp)
        settings = load_settings(
            data_dir=root / "data", settle_seconds=0, rescan_interval=3600, log_level="WARNING"
        )
        url = settings.resolved_database_url
        upgrade(url)
        engine = make_db_engine(url)
        statements = [0]

        @event.listens_for(engine, "before_cursor_execute")
        def _count(*_args: Any) -> None:
            statements[0] += 1

        reads = [0]

        def counting_read(path: Path, limit: int) -> bytes:
            reads[0] += 1
            return read_regular_file(path, limit)

        original_read = getattr(inbox, "read_regular_file")  # noqa: B009
        setattr(inbox, "read_regular_file", counting_read)  # noqa: B010
        try:
            store = JobStore(engine)
            _fill(settings.folder("inbox", PIPELINE), files)
            watcher = InboxWatcher(settings, store, [PIPELINE])
            started = time.monotonic()
            cpu = time.process_time()
            watcher.rescan_soon()
            while True:  # the first scan: every file is read once and queued
                watcher.tick()
                if watcher.pending() == 0:
                    break
            queued = len(store.list_jobs(limit=None))
            first = {"wall_s": time.monotonic() - started, "cpu_s": time.process_time() - cpu}
            reads[0], statements[0] = 0, 0
            samples: list[tuple[float, float]] = []
            for _ in range(repeats):
                wall, cpu = time.monotonic(), time.process_time()
                watcher.rescan_soon()
                watcher.tick()
                samples.append((time.process_time() - cpu, time.monotonic() - wall))
        finally:
            setattr(inbox, "read_regular_file", original_read)  # noqa: B010
            engine.dispose()
    cpu_per_rescan = sum(c for c, _ in samples) / len(samples)
    return {
        "files": files,
        "queued": queued,
        "first_scan_wall_s": round(first["wall_s"], 3),
        "first_scan_cpu_s": round(first["cpu_s"], 3),
        "rescans": repeats,
        "cpu_s_per_rescan": round(cpu_per_rescan, 4),
        "wall_s_per_rescan": round(sum(w for _, w in samples) / len(samples), 4),
        "reads_during_rescans": reads[0],
        "sql_statements_during_rescans": statements[0],
        "target_cpu_s": TARGET_CPU_SECONDS,
        "ok": cpu_per_rescan < TARGET_CPU_SECONDS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.files, args.repeats)
    print(json.dumps(result, indent=2))
    print(
        f"watcher rescan over {result['files']} waiting files: "
        f"{result['cpu_s_per_rescan']:.3f} s CPU per rescan "
        f"(target < {TARGET_CPU_SECONDS:g} s), {result['reads_during_rescans']} reads, "
        f"{result['sql_statements_during_rescans']} SQL statements"
    )


if __name__ == "__main__":
    main()
