"""Wiring of the HTTP port for the daemon: the job-table numbers of `/healthz` and
`/metrics` taken from the snapshot, the model list, and the console (when enabled)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from worker.config import Settings
from worker.console.actions import Actions
from worker.console.app import Console, ConsoleSources
from worker.console.security import Sessions, TokenError, read_token
from worker.llm.manager import ModelView
from worker.ops.health import Health
from worker.ops.httpd import Handler
from worker.ops.metrics import MetricsError, TableGauges
from worker.ops.snapshot import ModelState, Snapshot, SnapshotLoop
from worker.pipelines.pauses import Pauses
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import JobStore
from worker.queue.views import queue_depth


def snapshot_depth(snapshot: Snapshot) -> int | None:
    """Queued jobs of all pipelines; None when the last refresh could not read the table."""
    if not snapshot.database_ok or snapshot.table is None:
        return None
    return queue_depth(snapshot.table.counts)


def snapshot_gauges(snapshot: Snapshot, worker_id: str) -> TableGauges | None:
    """The metrics' table gauges from the snapshot (None: the database did not answer)."""
    if not snapshot.database_ok or snapshot.table is None:
        return None
    mine = sum(1 for job in snapshot.table.running if job.lease_owner == worker_id)
    return TableGauges(snapshot.table.counts, mine)


def model_states(views: Sequence[ModelView]) -> list[ModelState]:
    """The models of the model manager as the console shows them: name, kind and state,
    memory (measured once loaded, else estimated), resident or not."""
    return [
        ModelState(
            view.name,
            f"{view.kind}, {view.state.value}",
            (view.measured or view.memory).host,
            view.loaded,
        )
        for view in views
    ]


def read_console_token(settings: Settings) -> str | None:
    """The console's action token (None when actions are off). MetricsError if unusable,
    so the daemon stops at start-up with the reason, before the model is loaded."""
    if not settings.console_actions or settings.console_token_file is None:
        return None
    try:
        return read_token(settings.console_token_file)
    except TokenError as exc:
        raise MetricsError(f"{exc} (setting console_token_file)") from None


def build_console(
    settings: Settings,
    store: JobStore,
    snapshot: SnapshotLoop,
    health: Callable[[], Health],
    pipelines: Mapping[str, Pipeline],
    pauses: Pauses,
    token: str | None,
    wake: Callable[[], None],
) -> Handler | None:
    """The console's handler, or None when `console` is off."""
    if not settings.console:
        return None

    def changed() -> None:
        snapshot.refresh_now()
        wake()  # a retried job or a resumed pipeline is claimed at once

    actions = sessions = None
    if token is not None:
        actions = Actions(store, pauses, settings.console_retry_limit, changed)
        sessions = Sessions(token)
    sources = ConsoleSources(
        snapshot=snapshot.current,
        want_job=snapshot.want_job,
        health=health,
        pipelines=lambda: dict(pipelines.items()),
        paused=pauses.paused,
    )
    return Console(
        sources,
        settings.data_dir,
        settings.max_input_bytes,
        actions,
        sessions,
        settings.console_retry_limit,
    )
