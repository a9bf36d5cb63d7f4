"""The fleet as `status`, `model list` and `jobs show` see it: what each daemon serves, its
models' states, and why a queued job is still waiting (pure functions over rows)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from worker.queue.models import Job, JobStatus, Worker


@dataclass(frozen=True)
class Daemon:
    """A `workers` row, its JSON read."""

    id: str
    host: str
    instance: str | None
    state: str  # running, stopped, gone (stopped heartbeating without saying so)
    pipelines: dict[str, str] = field(default_factory=dict)  # pipeline -> model
    models: list[dict[str, Any]] = field(default_factory=list)
    budget: int | None = None

    @property
    def live(self) -> bool:
        return self.state == "running"

    def model_state(self, name: str) -> str | None:
        for model in self.models:
            if model.get("name") == name:
                return str(model.get("state"))
        return None


def daemon_state(worker: Worker, now: datetime, lease_seconds: float) -> str:
    """`running`, `stopped`, or `gone` for a daemon that stopped heartbeating without saying so.

    The lease keeper heartbeats every lease_seconds / 3; a full lease without one
    means the daemon died (its jobs are recovered by the others).
    """
    if worker.state == "running" and now - worker.heartbeat_at > timedelta(seconds=lease_seconds):
        return "gone"
    return worker.state


def _json(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def daemon_of(worker: Worker, now: datetime, lease_seconds: float) -> Daemon:
    """A `workers` row as a Daemon (bad JSON reads as nothing served)."""
    pipelines = _json(worker.pipelines_json, {})
    models = _json(worker.models_json, {})
    return Daemon(
        id=worker.id,
        host=worker.host,
        instance=worker.instance,
        state=daemon_state(worker, now, lease_seconds),
        pipelines={str(k): str(v) for k, v in pipelines.items()}
        if isinstance(pipelines, dict)
        else {},
        models=[m for m in models.get("models", []) if isinstance(m, dict)]
        if isinstance(models, dict)
        else [],
        budget=models.get("budget") if isinstance(models, dict) else None,
    )


def waiting_reason(job: Job, daemons: list[Daemon], grace: float) -> str | None:
    """Why a queued job is not running yet, for a person; None if nothing holds it back
    but free slots (or it is not queued)."""
    if job.status != JobStatus.QUEUED:
        return None
    return pipeline_reason(job.pipeline, job.origin, job.model, daemons, grace)


def pipeline_reason(
    pipeline: str, origin: str | None, model: str | None, daemons: list[Daemon], grace: float
) -> str | None:
    """Why a queued job of `pipeline` (of instance `origin`, needing `model` if set) waits."""
    servers = [d for d in daemons if pipeline in d.pipelines]
    model = model or next((d.pipelines[pipeline] for d in servers), None)
    what = f"pipeline {pipeline}" + (f" (model {model})" if model else "")
    if origin is not None:
        own = [d for d in servers if d.instance == origin]
        if not any(d.live for d in own):
            return (
                f"waiting for a daemon serving {what} on instance {origin}: the file is "
                "in that daemon's data folder"
            )
        servers = own
    live = [d for d in servers if d.live]
    if not servers:
        return (
            f"waiting for a daemon serving {what}: no daemon serves it; a daemon fails it "
            f"after unknown_pipeline_grace ({grace:g} s) unless one comes"
        )
    if not live:
        last = ", ".join(sorted(f"{d.id} ({d.state})" for d in servers))
        return f"waiting for a daemon serving {what}: none is running (served by {last})"
    if model is not None and all(d.model_state(model) not in ("resident", "idle") for d in live):
        states = ", ".join(sorted({str(d.model_state(model)) for d in live}))
        return f"waiting for model {model} to be loaded ({states}); it loads when memory allows"
    return None
