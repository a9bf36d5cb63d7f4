"""Slots: `parallel` threads that only run the jobs the dispatcher hands them."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from worker import liveness
from worker.queue.jobs import ClaimedJob

_CLOSE = None


class SlotPool:
    """A fixed set of threads, each running one job at a time.

    `on_free` is called whenever a slot finishes a job (the dispatcher claims the next
    one at once); `on_crash` when a slot's thread dies (the daemon stops). Each slot has
    a heartbeat, busy while it runs a job: the job's waits beat it (`liveness.beat`).
    """

    def __init__(
        self,
        size: int,
        run_job: Callable[[ClaimedJob], None],
        on_free: Callable[[], None],
        on_crash: Callable[[BaseException], None],
        stall_after: float = float("inf"),
        registry: liveness.Liveness = liveness.LIVENESS,
    ) -> None:
        self.size = size
        self.stall_after = stall_after
        self._registry = registry
        self._run_job = run_job
        self._on_free = on_free
        self._on_crash = on_crash
        self._jobs: queue.Queue[ClaimedJob | None] = queue.Queue()
        self._busy = 0  # handed out and not finished; changed under the lock
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._serve, args=(f"slot-{i}",), name=f"slot-{i}", daemon=True)
            for i in range(size)
        ]

    @property
    def started(self) -> bool:
        return self._threads[0].ident is not None

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def busy(self) -> int:
        with self._lock:
            return self._busy

    def submit(self, job: ClaimedJob) -> None:
        """Hand a claimed job to the next free slot."""
        with self._lock:
            self._busy += 1
        self._jobs.put(job)

    def close(self, timeout: float | None = None) -> bool:
        """Let every slot finish its job, then end the threads, waiting up to `timeout`
        seconds in all (None: no bound). False if a slot was still running then (its job
        keeps its lease until the process exits, and then expires)."""
        for _ in self._threads:
            self._jobs.put(_CLOSE)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        return not any(thread.is_alive() for thread in self._threads)

    def _serve(self, name: str) -> None:
        heartbeat = self._registry.register(name, self.stall_after)
        liveness.bind(heartbeat)
        try:
            while True:
                job = self._jobs.get()
                if job is _CLOSE:
                    return
                heartbeat.busy()
                try:
                    self._run_job(job)
                except BaseException as exc:  # a dying slot stops the daemon, not vanishes
                    self._on_crash(exc)
                    return
                finally:
                    heartbeat.idle()
                    with self._lock:
                        self._busy -= 1
                    self._on_free()
        finally:
            liveness.bind(None)
            self._registry.unregister(heartbeat)
