"""`edge-worker schedules`: next fire times, the last fire and its outcome."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from worker.cli import common
from worker.pipelines.schedule_time import cron_trigger, next_fires, zone
from worker.pipelines.spec import Pipeline
from worker.queue.fires import FireStore

TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


def _does(pipeline: Pipeline) -> str:
    parts = [f"sweep {', '.join(pipeline.sweep)}"] if pipeline.sweep else []
    if pipeline.inbox_mode == "scheduled":
        parts.append("inbox")
    return "\n".join(parts)


def schedules_table(
    pipelines: Mapping[str, Pipeline], fires: FireStore, now: datetime, count: int = 3
) -> Table:
    """One row per scheduled pipeline; times are shown in the pipeline's time zone."""
    table = Table(
        "pipeline",
        "schedule",
        "takes",
        "window",
        "next fires",
        "last fire",
        "enqueued",
        "succeeded",
        "failed",
        "waiting",
        title="schedules",
    )
    for name, pipeline in sorted(pipelines.items()):
        if pipeline.schedule is None:
            continue
        tz = zone(pipeline.timezone)
        upcoming = next_fires(cron_trigger(pipeline.schedule, pipeline.timezone), now, count)
        last = fires.last_fire(name)
        if last is None:
            last_text, numbers = "never", ["", "", "", ""]
        else:
            outcome = fires.outcome(last.id)
            last_text = last.fire_time.astimezone(tz).strftime(TIME_FORMAT)
            if last.catch_up:
                last_text += " (catch-up)"
            numbers = [
                str(last.jobs_enqueued),
                str(outcome.succeeded),
                str(outcome.failed),
                str(outcome.waiting),
            ]
        table.add_row(
            Text(name),
            Text(f"{pipeline.schedule} ({pipeline.timezone})"),
            Text(_does(pipeline)),
            Text(pipeline.window or "always"),
            "\n".join(fire.astimezone(tz).strftime(TIME_FORMAT) for fire in upcoming),
            last_text,
            *numbers,
        )
    return table


def schedules(
    count: Annotated[int, typer.Option("--next", "-n", help="How many next fire times.")] = 3,
) -> None:
    """Scheduled pipelines: their next fire times, the last fire and its outcome."""
    from worker.queue.jobs import utcnow

    settings = common.settings()
    pipelines = common.load_pipeline_set(settings)
    store = common.open_store(settings)
    if not any(p.schedule for p in pipelines.values()):
        common.console.print("no scheduled pipelines")
        return
    common.console.print(schedules_table(pipelines, FireStore(store.db), utcnow(), count))
