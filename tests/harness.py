"""The run side of a daemon, assembled as `worker.ops.daemon` does, for fast tests with
a fake engine: lease keeper, recovery sweep, job runner and dispatcher."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Mapping

from worker.config import Settings
from worker.llm.embedders import Embedders
from worker.llm.engine import Engine
from worker.ops.services import ServiceGroup
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import JobStore
from worker.run.dispatcher import Dispatcher
from worker.run.kinds.base import JobContext
from worker.run.kinds.registry import build_handlers
from worker.run.leases import LeaseKeeper
from worker.run.recorder import Recorder
from worker.run.recovery import RecoverySweep
from worker.run.runner import JobRunner
from worker.run.stop import StopFlags
from worker.sandbox import Sandbox

_shared: list[Sandbox] = []


def shared_sandbox() -> Sandbox:
    """One parsing sandbox for every test runner of the session (children start on first
    use), closed when the tests end."""
    if not _shared:
        _shared.append(Sandbox(start=False))
        atexit.register(_shared[0].close)
    return _shared[0]


class Runner:
    """Claims and runs jobs like a daemon, without sources, metrics or signals."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        engine: Engine,
        pipelines: Mapping[str, Pipeline],
        worker_id: str,
        stop: StopFlags,
        wake: threading.Event,
        sandbox: Sandbox | None = None,
        embedders: Embedders | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.stop = stop
        self.wake = wake
        self.leases = LeaseKeeper(store, worker_id, settings.lease_seconds)
        record = Recorder(stop, settings.shutdown_timeout)
        context = JobContext(
            settings, store, engine, record, sandbox or shared_sandbox(), embedders=embedders
        )
        handlers = build_handlers(context)
        self.jobs = JobRunner(settings, store, handlers, pipelines, self.leases, record, stop)
        self.recovery = RecoverySweep(settings, store, wake)
        self.dispatcher = Dispatcher(
            settings,
            store,
            pipelines,
            worker_id,
            self.jobs.run_one,
            stop,
            wake,
            outage=record.outage,
        )

    def run(self, once: bool = False, inputs_pending: Callable[[], int] = lambda: 0) -> None:
        """Claim and run jobs until stopped (`once`: until nothing is left to do)."""
        group = ServiceGroup()
        try:
            group.start_all([self.leases, self.recovery])
            self.dispatcher.run(once=once, inputs_pending=inputs_pending)
        finally:
            group.stop_all()
