"""Driving the real `edge-worker` process in acceptance tests."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EDGE_WORKER = str(Path(sys.executable).parent / "edge-worker")
LIVE = ("queued", "running", "waiting")


def daemon_env(data_dir: Path, models_dir: Path, **settings: object) -> dict[str, str]:
    """Environment for a daemon on `data_dir` with fast settle/poll times for tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
    env.update(
        EDGE_WORKER_DATA_DIR=str(data_dir),
        EDGE_WORKER_MODELS_DIR=str(models_dir),
        EDGE_WORKER_SETTLE_SECONDS="0.5",
        EDGE_WORKER_RESCAN_INTERVAL="2",
        EDGE_WORKER_SWEEP_INTERVAL="1",
        EDGE_WORKER_LOG_FORMAT="json",
        # One thread: llama.cpp threads spin at barriers, and with several daemons (or a
        # busy host) two threads each oversubscribe 2 cores and run many times slower.
        EDGE_WORKER_N_THREADS="1",
        EDGE_WORKER_PARALLEL="2",  # two slots: batching exercised, start-up and memory lean
        COLUMNS="200",  # rich tables unwrapped, so tests can read them
    )
    env.update({f"EDGE_WORKER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `edge-worker ARGS` to completion."""
    return subprocess.run(
        [EDGE_WORKER, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


class Daemon:
    """A running `edge-worker run`, its JSON log in a file."""

    def __init__(
        self, env: dict[str, str], log_path: Path, *args: str, program: list[str] | None = None
    ) -> None:
        """Start `edge-worker run ARGS` (or `PROGRAM run ARGS`, e.g. a fault-injecting wrapper)."""
        self.env = env
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [*(program or [EDGE_WORKER]), "run", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def events(self) -> list[dict[str, Any]]:
        return self.read_events(self.log_path)

    @staticmethod
    def read_events(log_path: Path) -> list[dict[str, Any]]:
        """The JSON events in a daemon log file."""
        found = []
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return found

    def wait_for(self, event: str, timeout: float = 60, count: int = 1) -> dict[str, Any]:
        """Wait until `event` has been logged `count` times; returns the last one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = [e for e in self.events() if e.get("event") == event]
            if len(matches) >= count:
                return matches[-1]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited {self.proc.returncode} before {event}:\n"
                    + self.log_path.read_text()
                )
            time.sleep(0.1)
        raise AssertionError(f"no {event} within {timeout}s:\n" + self.log_path.read_text())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()


def write_pipelines(folder: Path, **specs: str) -> Path:
    """A pipelines folder holding `<name>.toml` for each spec given; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in specs.items():
        (folder / f"{name}.toml").write_text(spec)
    return folder


def db_rows(data_dir: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Query the daemon's SQLite database directly, as another program would."""
    with sqlite3.connect(data_dir / "jobs.db", timeout=30) as conn:
        return conn.execute(sql, params).fetchall()


def wait_until_final(data_dir: Path, count: int, timeout: float = 120) -> list[tuple[Any, ...]]:
    """Wait until `count` jobs exist and none is queued, running or waiting; (id, status)."""
    deadline = time.monotonic() + timeout
    rows: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        if (data_dir / "jobs.db").exists():
            try:
                rows = db_rows(data_dir, "SELECT id, status FROM jobs ORDER BY id")
            except sqlite3.OperationalError:  # created, not yet migrated
                time.sleep(0.2)
                continue
            if len(rows) >= count and all(s not in LIVE for _, s in rows):
                return rows
        time.sleep(0.2)
    raise AssertionError(f"jobs not final within {timeout}s: {rows}")


def wait_path(path: Path, timeout: float = 30) -> Path:
    """Wait for `path` to exist. A file job's original moves to done/ or failed/ (its
    `.error.json` written just before) only after the job's final status is recorded, so
    a test that saw the status must still wait for the file."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout:g}s"
        time.sleep(0.1)
    return path


def write_slowly(path: Path, data: bytes, chunks: int, pause: float) -> None:
    """Write a file the way a slow copy does: several writes with pauses, then close."""
    step = max(1, len(data) // chunks)
    with path.open("wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start : start + step])
            handle.flush()
            time.sleep(pause)
