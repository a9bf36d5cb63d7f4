"""Assembly of the daemon: load (config, pipelines, model, database), start the services
in order from one list, run the dispatcher, and stop everything in reverse order.

Threads of a running daemon (docs/architecture.md): main (the dispatcher), `slot-N`
(one per `parallel`), `decode` (llama.cpp), `inbox-watcher` (+ watchdog's observer),
`lease-keeper`, `recovery`, `metrics` (+ `metrics-http` with a port), `pg-listen`
(PostgreSQL), APScheduler's (schedules), `watchdog` (under systemd).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from types import FrameType

from worker.background import BackgroundLoop
from worker.config import Settings, systemd_notify_socket
from worker.io.instance import instance_id
from worker.llm.manager import ModelManager
from worker.llm.memory import Memory, gpu_figure
from worker.logs import event
from worker.ops import early_hup
from worker.ops.health import Health
from worker.ops.housekeeping import Housekeeping
from worker.ops.metrics import DaemonMetrics, MetricsPublisher
from worker.ops.model_metrics import ModelCollector
from worker.ops.port import (
    build_console,
    model_states,
    read_console_token,
    snapshot_depth,
    snapshot_gauges,
)
from worker.ops.reload import Reloader, checked_pipelines, held_inboxes
from worker.ops.running_marker import mark_running, mark_stopped, previous_holder
from worker.ops.sd_notify import Notifier, Watchdog
from worker.ops.services import Service, ServiceDied, ServiceGroup
from worker.ops.snapshot import Snapshot, SnapshotLoop
from worker.pipelines.live import LivePipelines
from worker.pipelines.models import served_models
from worker.pipelines.pauses import Pauses
from worker.queue.database import database_label, make_db_engine, timeouts_of
from worker.queue.housekeeping import HousekeepingStore
from worker.queue.jobs import ClaimedJob, JobStore, offset_clock
from worker.queue.migrate import upgrade_when_reachable
from worker.queue.outage import DatabaseUnavailable
from worker.run.dispatcher import Dispatcher
from worker.run.hooks import HookRunner, final_hook
from worker.run.kinds.base import JobContext
from worker.run.kinds.registry import build_handlers
from worker.run.leases import LeaseKeeper
from worker.run.recorder import Recorder
from worker.run.recovery import RecoverySweep
from worker.run.routing import ModelRouter
from worker.run.runner import JobRunner
from worker.run.stop import StopFlags
from worker.sandbox import Sandbox, SandboxLimits
from worker.sources.inbox import InboxWatcher
from worker.sources.pg_listen import listener_for
from worker.sources.schedules import Scheduler

log = logging.getLogger(__name__)


class WorkerRegistration:
    """This daemon's row in `workers`: registered at start, marked stopped at the end."""

    name = "worker-registration"

    def __init__(
        self, store: JobStore, worker_id: str, model: str, slots: int, router: ModelRouter
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.model = model
        self.slots = slots
        self.router = router

    def start(self) -> None:
        self.store.register_worker(
            self.worker_id,
            socket.gethostname(),
            os.getpid(),
            self.model,
            self.slots,
            instance=self.router.instance,
            pipelines=self.router.serving(),
        )
        self.router.publish(force=True)

    def stop(self) -> None:
        try:
            self.store.worker_heartbeat(self.worker_id, state="stopped")
        except DatabaseUnavailable as exc:
            event("worker.heartbeat_failed", error=str(exc))


def run_daemon(
    settings: Settings,
    once: bool = False,
    reload_settings: Callable[[], Settings] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or, with `once`, until the queue and inboxes are drained).

    SIGHUP reloads the pipelines and live settings (`reload_settings` reads them again).
    Raises PipelineError, ModelError or a database error before any job is claimed, and
    ServiceDied when a background service stopped on its own.
    """
    from worker.llm.serving import build_manager, preload

    notify_address, watchdog_seconds = systemd_notify_socket()
    pipelines = LivePipelines(checked_pipelines(settings))
    console_token = read_console_token(settings)  # a bad token file stops us before the model
    # Every model the pipelines name, checked against the memory budget; those that fit
    # are loaded now (a missing or broken model stops start-up), the others on demand.
    manager, budget = build_manager(settings, served_models(pipelines, settings))
    event(
        "models.planned",
        budget=budget.host,
        budget_gpu=gpu_figure(budget.gpu),
        budget_detail=budget.describe(),
        models={v.name: v.estimate.describe() for v in manager.views()},
    )
    reload = reload_settings or (lambda: settings)
    # Warm parsing children, started from here (never forked from the daemon); closed after
    # the slots are done with them, each wait bounded.
    sandbox = Sandbox(SandboxLimits.from_settings(settings))
    try:
        preload(manager, budget.memory)
        _serve(
            settings,
            pipelines,
            manager,
            budget.memory,
            once,
            notify_address,
            watchdog_seconds,
            reload,
            console_token,
            sandbox,
        )
    finally:
        sandbox.close()
        manager.close()


def _serve(
    settings: Settings,
    pipelines: LivePipelines,
    manager: ModelManager,
    budget: Memory,
    once: bool,
    notify_address: str | None,
    watchdog_seconds: float | None,
    reload_settings: Callable[[], Settings],
    console_token: str | None,
    sandbox: Sandbox,
) -> None:
    url = settings.resolved_database_url
    upgrade_when_reachable(url, settings.db_start_timeout)
    store = JobStore(
        make_db_engine(url, timeouts_of(settings)),
        clock=offset_clock(settings.clock_offset_seconds),
    )
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    requeue_suspects(settings, store)
    mark_running(settings.data_dir, worker_id)  # before the first claim, durably
    stop = StopFlags()
    wake = threading.Event()
    notifier = Notifier(notify_address)
    died: list[BackgroundLoop] = []

    def on_death(loop: BackgroundLoop, exc: BaseException) -> None:
        event(
            "service.died", logging.ERROR, service=loop.name, error=f"{type(exc).__name__}: {exc}"
        )
        died.append(loop)
        if loop is leases:  # nothing renews the leases: the jobs in hand cannot finish safely
            stop.hard.set()
        stop.stop_claiming()  # finish the jobs in hand, then exit non-zero: systemd restarts us
        wake.set()

    pauses = Pauses(settings.data_dir / "paused")
    loops: list[BackgroundLoop] = []
    snapshot = SnapshotLoop(
        store,
        settings.data_dir,
        settings.snapshot_interval,
        loops=lambda: loops,
        models=lambda: model_states(manager.views()),
    )
    manager.on_change = wake.set  # a model loaded or unloaded: claim again
    router = ModelRouter(
        settings, store, pipelines, manager, budget, instance_id(settings.data_dir), worker_id
    )
    model_names = ",".join(manager.names)
    metrics = DaemonMetrics(
        store,
        worker_id,
        model_names,
        router.slots,
        manager.load_seconds(),
        table=lambda: snapshot_gauges(snapshot.current(), worker_id),
    )
    metrics.watch_engine(manager.engine_stats)
    metrics.registry.register(ModelCollector(manager.views, budget))
    metrics.watch_port(lambda: snapshot.queries.from_port, lambda: snapshot.current().refreshes)
    record = Recorder(stop, settings.shutdown_timeout)
    leases = LeaseKeeper(store, worker_id, settings.lease_seconds)
    context = JobContext(settings, store, None, record, sandbox, models=manager)
    runner = JobRunner(
        settings,
        store,
        build_handlers(context),
        pipelines,
        leases,
        record,
        stop,
        observer=metrics,
    )
    hooks = HookRunner()
    run_hook = final_hook(pipelines, hooks)

    def on_final(job: ClaimedJob, status: str, output: str | None) -> None:
        run_hook(job, status, output)
        snapshot.refresh_now()  # /healthz, /metrics and the console follow within a moment

    runner.on_final = on_final
    dispatcher = Dispatcher(
        settings,
        store,
        pipelines,
        worker_id,
        router.wrap(runner.run_one),
        stop,
        wake,
        record.outage,
        router=router,
    )
    dispatcher.paused = pauses.paused

    started = threading.Event()  # every service up: the dispatcher is about to claim

    def health() -> Health:
        # From the snapshot: a probe never queries the database (issue #20.8).
        depth = snapshot_depth(snapshot.current())
        if not started.is_set():
            reason: str | None = "starting"
        elif stop.soft.is_set():
            reason = "stopping"
        elif depth is None:
            reason = "database unavailable"
        else:
            reason = None
        ready = reason is None
        finished = metrics.last_finished_at()
        return Health(
            ready,
            dispatcher.slots.busy(),
            dispatcher.slots.size,
            depth,
            finished.isoformat() if finished else None,
            reason,
        )

    watcher = InboxWatcher(
        settings, store, pipelines, on_enqueued=wake.set, held=held_inboxes(pipelines)
    )
    watcher.paused = pauses.paused
    scheduler = None
    if not once:  # --once drains what is there; schedules fire only in a running daemon
        scheduler = Scheduler(
            settings, store, pipelines, worker_id, watcher.enqueue_inbox, wake.set
        )
    reloader = Reloader(settings, reload_settings, pipelines, watcher, scheduler)
    console = build_console(
        settings, store, snapshot, health, pipelines, pauses, console_token, wake.set
    )
    loops += [
        snapshot,
        MetricsPublisher(
            metrics,
            settings.resolved_metrics_file,
            settings.metrics_interval,
            settings.metrics_port,
            health,
            console,
            settings.http_bind,
            settings.http_max_connections,
            settings.http_timeout,
            settings.http_allowed_hosts,
        ),
        watcher,
        leases,
        # --once ends when the queue is drained, usually within a lease period: it
        # recovers expired leases at once, as it always did.
        RecoverySweep(settings, store, wake, observer=metrics, start_grace=0.0 if once else None),
    ]
    # PostgreSQL: NOTIFY wakes an idle dispatcher at once (a flood: once per poll_interval).
    listener = listener_for(url, wake, settings.poll_interval)
    if listener is not None:
        loops.append(listener)
    loops.append(reloader)
    loops.append(hooks)
    loops.append(Housekeeping(settings, HousekeepingStore(store.db, clock=store.clock)))
    for loop in [*loops, *([scheduler] if scheduler is not None else [])]:
        loop.on_death = on_death
        # Every loop is judged: a step silent for stall_seconds (or the loop's own longer
        # bound, e.g. the hooks' timeout) stops the watchdog's pings.
        loop.stall_after = max(loop.stall_after or 0.0, settings.stall_seconds)
    services: list[Service] = [
        *loops[:2],
        WorkerRegistration(store, worker_id, model_names, router.slots, router),
        *loops[2:],
    ]
    if scheduler is not None:
        services.append(scheduler)
    if watchdog_seconds:
        watchdog = Watchdog(
            notifier,
            watchdog_seconds / 2,
            lambda: status_line(dispatcher.slots.busy(), dispatcher.slots.size, snapshot.current()),
            also=[scheduler] if scheduler is not None else [],  # a hung fire, too
        )
        watchdog.on_death = on_death
        services.append(watchdog)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only flags: the dispatcher, the slots and the reloader act on them.
        if signum == signal.SIGHUP:
            reloader.requested.set()
            return
        stop.request()
        wake.set()

    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    if early_hup.pending():  # a SIGHUP during start-up (`edge-worker run` recorded it)
        reloader.requested.set()
    group = ServiceGroup()
    try:
        group.start_all(services)
        event(
            "daemon.ready",
            worker=worker_id,
            inbox=str((settings.data_dir / "inbox").resolve()),
            pipelines=sorted(pipelines),
            database=database_label(url),
        )
        notifier.send("READY=1", f"STATUS=ready; inbox {settings.data_dir / 'inbox'}")
        started.set()
        dispatcher.run(once=once, inputs_pending=watcher.pending)
    finally:
        if not dispatcher.slots_finished:  # a slot may still be inside llama.cpp
            manager.leave_engines_to_exit()
        notifier.send("STOPPING=1", "STATUS=stopping")
        event("daemon.stopping", worker=worker_id)
        group.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        mark_stopped(settings.data_dir, worker_id)
    event("daemon.stopped", worker=worker_id)
    if died:
        names = ", ".join(loop.name for loop in died)
        raise ServiceDied(f"background service stopped on its own: {names}")


def requeue_suspects(settings: Settings, store: JobStore) -> None:
    """After an unclean exit (the running marker is still there), the jobs the dead
    process held go back at once as suspects: each runs alone next (its crash counted),
    so the cause of a crash is found at its next crash, and its neighbours are cleared."""
    previous = previous_holder(settings.data_dir)
    if previous is None:
        return
    recovered = store.requeue_suspects(previous, settings.max_solo_crashes)
    event(
        "daemon.unclean_restart",
        logging.WARNING,
        previous=previous,
        suspects=[job.id for job in recovered if job.status == "queued"],
        dead=[job.id for job in recovered if job.status == "dead"],
    )


def status_line(busy: int, slots: int, snapshot: Snapshot) -> str:
    """`running 1 here (of 8 slots); table: queued 3, running 1` for systemd's STATUS=
    line: this daemon's slots from memory, the table from the port's snapshot (the
    watchdog never queries the database itself)."""
    here = f"running {busy} here (of {slots} slots)"
    if not snapshot.database_ok or snapshot.table is None:
        return f"{here}; table: not read (database unavailable?)"
    totals: dict[str, int] = {}
    for (_pipeline, status), count in snapshot.table.counts.items():
        totals[status] = totals.get(status, 0) + count
    table = ", ".join(f"{status} {totals[status]}" for status in sorted(totals)) or "empty"
    return f"{here}; table: {table}"
