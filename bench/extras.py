"""Other helpers' bench modules, run after the throughput figures when they exist.

Each is a standalone `bench/<topic>.py` with `measure(...) -> dict`. They are imported
only if present (a branch that has not merged yet simply has none), called with the
keyword arguments their signature names among the ones below, and each may be skipped
with `--skip <topic>`. A module that fails is reported, not fatal: the throughput figures
already measured are kept.
"""

from __future__ import annotations

import importlib
import inspect
import traceback
from pathlib import Path
from typing import Any

# topic: what its row measures (issue)
EXTRAS = {
    "sandbox_overhead": "parsing in the sandbox against in-process (#18)",
    "mixed_models": "three pipelines, two of three models fit: one daemon vs single (#19)",
    "embeddings": "embeddings jobs/s (#19)",
    "watcher_rescan": "CPU of the inbox watcher's rescans (#20)",
    "decode_threads": "two models on one CPU: split cores or a shared lock (#19)",
}


def available() -> list[str]:
    """The extra topics whose module is in bench/."""
    here = Path(__file__).resolve().parent
    return [topic for topic in EXTRAS if (here / f"{topic}.py").is_file()]


def run_extra(topic: str, known: dict[str, Any]) -> dict[str, Any]:
    """Call `bench.<topic>.measure` with the arguments it takes from `known`."""
    try:
        module = importlib.import_module(f"bench.{topic}")
        measure = module.measure
        accepted = inspect.signature(measure).parameters
        kwargs = {name: value for name, value in known.items() if name in accepted}
        result = measure(**kwargs)
        return dict(result) if isinstance(result, dict) else {"result": result}
    except Exception as exc:  # one helper's module must not sink the whole bench
        return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}


def format_row(topic: str, figures: dict[str, Any]) -> str:
    """One line for the summary: the topic and its figures (not the trace)."""
    shown = {k: v for k, v in figures.items() if k != "trace"}
    return f"  {topic:<18} {shown}"
