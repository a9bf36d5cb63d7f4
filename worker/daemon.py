"""Start-up and shutdown of the daemon, in order: config, pipelines, model, database, sources."""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from types import FrameType

from worker.config import Settings, systemd_notify_socket
from worker.db.engine import make_engine
from worker.db.migrate import upgrade
from worker.engine import EngineOptions
from worker.engine.batched import BatchedEngine, BatchOptions
from worker.engine.model_files import ModelFile, resolve_model
from worker.logs import event
from worker.metrics import start_metrics
from worker.model_names import startup_model_errors
from worker.notify import Notifier, Progress, Watchdog
from worker.pipelines import PipelineError, load_pipelines
from worker.runner import Runner, StopFlags
from worker.sources.pg_notify import start_listener
from worker.sources.schedule import Scheduler
from worker.sources.watch_folder import InboxWatcher
from worker.store import JobStore


def engine_options(settings: Settings) -> EngineOptions:
    return EngineOptions(
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        seed=settings.seed,
    )


def open_engine(settings: Settings, model: ModelFile, parallel: int | None = None) -> BatchedEngine:
    """Load `model` with the settings' llama.cpp and batching parameters."""
    batch = BatchOptions(
        parallel=parallel or settings.parallel,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        n_threads_batch=settings.n_threads_batch,
        batch_invariant=settings.batch_invariant,
    )
    return BatchedEngine(model, engine_options(settings), batch)


def run_daemon(settings: Settings, once: bool = False) -> None:
    """Run until SIGTERM/SIGINT (or, with `once`, until the queue and inboxes are drained).

    Raises PipelineError, ModelError or a database error before any job is claimed.
    """
    notify_address, watchdog_seconds = systemd_notify_socket()
    pipelines = load_pipelines(settings.pipelines_dir)
    model_errors = startup_model_errors(pipelines, settings)
    if model_errors:
        raise PipelineError("\n".join(model_errors))
    model = resolve_model(settings)
    engine = open_engine(settings, model)
    event("model.loaded", model=model.name, path=str(model.path),
          seconds=round(engine.load_seconds, 2))  # fmt: skip

    url = settings.resolved_database_url
    upgrade(url)
    store = JobStore(make_engine(url))
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    metrics = start_metrics(store, worker_id, model.name, settings.parallel,
                            engine.load_seconds, settings.resolved_metrics_file,
                            settings.metrics_interval, settings.metrics_port)  # fmt: skip
    store.register_worker(
        worker_id, socket.gethostname(), os.getpid(), model.name, settings.parallel
    )

    stop = StopFlags()
    wake = threading.Event()
    progress = Progress()
    notifier = Notifier(notify_address)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.request()
        wake.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    held = [n for n, p in pipelines.items() if p.schedule and p.inbox_mode == "scheduled"]
    watcher = InboxWatcher(settings, store, pipelines, on_enqueued=wake.set, held=held)
    watcher.start()
    schedules = Scheduler(settings, store, pipelines, worker_id, watcher.enqueue_inbox, wake.set)
    if not once:  # --once drains what is there; schedules fire only in a running daemon
        schedules.start()
    listener = start_listener(url, wake)  # PostgreSQL: NOTIFY wakes an idle runner at once
    event("daemon.ready", worker=worker_id, inbox=str((settings.data_dir / "inbox").resolve()),
          pipelines=sorted(pipelines), database=make_engine_label(url))  # fmt: skip
    runner = Runner(settings, store, engine, pipelines, worker_id, stop, wake, progress)
    notifier.send("READY=1", f"STATUS=ready; inbox {settings.data_dir / 'inbox'}")
    watchdog = Watchdog(
        notifier,
        interval=(watchdog_seconds or 10.0) / 2,
        progress=progress,
        status=lambda: queue_status(store),
        stale_after=(watchdog_seconds or 10.0) / 2,
    )
    if watchdog_seconds:
        watchdog.start()
    try:
        runner.run(once=once, inputs_pending=watcher.pending)
    finally:
        notifier.send("STOPPING=1", "STATUS=stopping")
        event("daemon.stopping", worker=worker_id)
        if watchdog_seconds:
            watchdog.stop()
        schedules.stop()
        watcher.stop()
        engine.close()
        if listener is not None:
            listener.stop()
        try:
            store.worker_heartbeat(worker_id, state="stopped")
        except Exception as exc:
            event("worker.heartbeat_failed", error=str(exc))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        metrics.stop()  # the final numbers, after the last job
    event("daemon.stopped", worker=worker_id)


def queue_status(store: JobStore) -> str:
    """`queued 3, running 1, ...` for systemd's STATUS= line."""
    totals: dict[str, int] = {}
    for (_pipeline, status), count in store.counts().items():
        totals[status] = totals.get(status, 0) + count
    return ", ".join(f"{status} {totals[status]}" for status in sorted(totals)) or "idle"


def make_engine_label(url: str) -> str:
    """The database URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
