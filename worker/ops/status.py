"""`edge-worker status`: one snapshot of the job table, as rich tables or as JSON.

The JSON keys are a stable interface for scripts (see README, "Status"); the
rich rendering is for people and may change.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url

from worker.config import Settings
from worker.llm.memory import human
from worker.ops.fleet import Daemon, daemon_of, daemon_state, pipeline_reason
from worker.queue.jobs import JobStore, utcnow
from worker.queue.models import STATUSES, Worker
from worker.queue.views import RunningJob, Throughput, queue_depth, running_jobs, throughput

# Daemons whose last heartbeat is older than this are not shown (they left long ago).
WORKERS_SHOWN_FOR = timedelta(hours=24)


@dataclass(frozen=True)
class Snapshot:
    """What `status` shows, read at `now`."""

    now: datetime
    database: str
    counts: dict[tuple[str, str], int]
    throughput: Throughput
    running: list[RunningJob]
    workers: list[Worker]


def take_snapshot(store: JobStore, database: str, now: datetime) -> Snapshot:
    """Read the queue, the last minute's throughput, running jobs and daemons."""
    workers = [w for w in store.list_workers() if now - w.heartbeat_at < WORKERS_SHOWN_FOR]
    return Snapshot(
        now=now,
        database=database,
        counts=store.counts(),
        throughput=throughput(store, now),
        running=running_jobs(store),
        workers=workers,
    )


def worker_state(worker: Worker, now: datetime, lease_seconds: float) -> str:
    """`running`, `stopped`, or `gone` for a daemon that stopped heartbeating without saying so."""
    return daemon_state(worker, now, lease_seconds)


def models_of(daemons: list[Daemon], counts: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
    """Each running daemon's models: state, memory (estimated, measured), loads, and the
    jobs queued for the pipelines it serves with that model."""
    found = []
    for daemon in daemons:
        if not daemon.live:
            continue
        for model in daemon.models:
            name = model.get("name")
            pipelines = sorted(p for p, m in daemon.pipelines.items() if m == name)
            found.append(
                {
                    "daemon": daemon.id,
                    **model,
                    "pipelines": pipelines,
                    "queued": sum(counts.get((p, "queued"), 0) for p in pipelines),
                }
            )
    return found


def waiting_of(
    daemons: list[Daemon], counts: dict[tuple[str, str], int], grace: float
) -> dict[str, str]:
    """Why the queued jobs of a pipeline wait, where no running daemon can take them."""
    if any(d.live and not d.pipelines for d in daemons):
        return {}  # a daemon that does not say what it serves (an older version)
    reasons = {}
    for (pipeline, status), count in counts.items():
        if status != "queued" or not count:
            continue
        reason = pipeline_reason(pipeline, None, None, daemons, grace)
        if reason is not None:
            reasons[pipeline] = reason
    return reasons


def _seconds(later: datetime, earlier: datetime | None) -> float | None:
    return None if earlier is None else round((later - earlier).total_seconds(), 1)


def to_json(snapshot: Snapshot, lease_seconds: float, grace: float = 600.0) -> dict[str, Any]:
    """The snapshot as plain data with stable keys (`edge-worker status --json`); `grace`
    is unknown_pipeline_grace, for the waiting reasons."""
    now = snapshot.now
    daemons = [daemon_of(w, now, lease_seconds) for w in snapshot.workers]
    pipelines = sorted({p for p, _ in snapshot.counts})
    totals = {s: sum(snapshot.counts.get((p, s), 0) for p in pipelines) for s in STATUSES}
    rate = snapshot.throughput
    return {
        "generated_at": now.isoformat(),
        "database": snapshot.database,
        "queue_depth": queue_depth(snapshot.counts),
        "totals": totals,
        "pipelines": {p: {s: snapshot.counts.get((p, s), 0) for s in STATUSES} for p in pipelines},
        "throughput": {
            "window_seconds": rate.window_seconds,
            "jobs": rate.jobs,
            "completion_tokens": rate.completion_tokens,
            "jobs_per_minute": round(rate.jobs_per_minute, 3),
            "tokens_per_second": round(rate.tokens_per_second, 3),
        },
        "running": [
            {
                "id": job.id,
                "pipeline": job.pipeline,
                "worker": job.owner,
                "attempts": job.attempts,
                "started_at": job.started_at.isoformat() if job.started_at else None,
                "age_seconds": _seconds(now, job.started_at),
            }
            for job in snapshot.running
        ],
        "workers": [
            {
                "id": w.id,
                "host": w.host,
                "pid": w.pid,
                "model": w.model,
                "slots": w.slots,
                "state": worker_state(w, now, lease_seconds),
                "started_at": w.started_at.isoformat(),
                "heartbeat_at": w.heartbeat_at.isoformat(),
                "heartbeat_age_seconds": _seconds(now, w.heartbeat_at),
                "instance": d.instance,
                "pipelines": d.pipelines,
                "memory_budget": d.budget,
            }
            for w, d in zip(snapshot.workers, daemons, strict=True)
        ],
        "models": models_of(daemons, snapshot.counts),
        "waiting": waiting_of(daemons, snapshot.counts, grace),
    }


def render(snapshot: Snapshot, lease_seconds: float) -> Group:
    """The dashboard: queue by pipeline, last minute's throughput, running jobs, daemons."""
    data = to_json(snapshot, lease_seconds)
    # Pipeline names, daemon ids, hosts and models come from the job table: they are data,
    # shown as Text so that `[...]` in them is never taken for Rich markup.
    queue = Table("pipeline", *STATUSES, title="jobs")
    for name, by_status in data["pipelines"].items():
        queue.add_row(Text(name), *(str(by_status[s]) for s in STATUSES))
    if len(data["pipelines"]) > 1:
        queue.add_row("all", *(str(data["totals"][s]) for s in STATUSES), style="bold")

    rate = data["throughput"]
    speed = Table(
        "jobs",
        "jobs/min",
        "generated tokens",
        "tokens/s",
        title="last minute",
        caption="tokens/s: generated tokens of the last 60 s / 60 s, all daemons",
    )
    speed.add_row(
        str(rate["jobs"]),
        f"{rate['jobs_per_minute']:.1f}",
        str(rate["completion_tokens"]),
        f"{rate['tokens_per_second']:.1f}",
    )

    running = Table("job", "pipeline", "daemon", "attempt", "age", title="running")
    for job in data["running"]:
        age = job["age_seconds"]
        running.add_row(
            str(job["id"]),
            Text(job["pipeline"]),
            Text(job["worker"] or ""),
            str(job["attempts"]),
            "" if age is None else f"{age:.0f} s",
        )

    daemons = Table("daemon", "host", "state", "model", "slots", "last heartbeat", title="daemons")
    for w in data["workers"]:
        daemons.add_row(
            Text(w["id"]),
            Text(w["host"]),
            Text(w["state"]),
            Text(w["model"]),
            str(w["slots"]),
            f"{w['heartbeat_age_seconds']:.0f} s ago",
        )
    parts: list[Any] = [queue, speed, running, daemons]
    if data["models"]:
        parts.append(_models_table(data["models"]))
    if data["waiting"]:
        waiting = Table("pipeline", "why its queued jobs wait", title="waiting")
        for pipeline, reason in sorted(data["waiting"].items()):
            waiting.add_row(Text(pipeline), Text(reason))
        parts.append(waiting)
    return Group(*parts)


def _size(value: Any) -> str:
    return human(value) if isinstance(value, int | float) else ""


def _models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(
        "daemon",
        "model",
        "kind",
        "state",
        "estimated",
        "measured",
        "loads",
        "in hand",
        "queued",
        title="models",
    )
    for m in models:
        table.add_row(
            Text(str(m.get("daemon"))),
            Text(str(m.get("name"))),
            Text(str(m.get("kind", ""))),
            Text(str(m.get("state", ""))),
            _size(m.get("estimate")),
            _size(m.get("measured")),
            str(m.get("loads", "")),
            str(m.get("in_hand", "")),
            str(m.get("queued", "")),
        )
    return table


def watch_status(
    settings: Settings,
    store: JobStore,
    console: Console,
    as_json: bool = False,
    watch: bool = False,
    interval: float = 2.0,
) -> None:
    """Print the status once, or (`watch`) refresh it every `interval` seconds until Ctrl-C.

    With `as_json` each refresh is one JSON object on its own line.
    """
    database = make_url(settings.resolved_database_url).render_as_string(hide_password=True)

    def current() -> Snapshot:
        return take_snapshot(store, database, utcnow())

    def emit_json() -> None:
        data = to_json(current(), settings.lease_seconds, settings.unknown_pipeline_grace)
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    try:
        if as_json:
            emit_json()
            while watch:
                time.sleep(interval)
                emit_json()
        elif not watch:
            console.print(render(current(), settings.lease_seconds))
        else:
            with Live(
                render(current(), settings.lease_seconds), console=console, auto_refresh=False
            ) as live:
                while True:
                    time.sleep(interval)
                    live.update(render(current(), settings.lease_seconds), refresh=True)
    except KeyboardInterrupt:
        return
