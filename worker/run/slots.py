"""Slots: `parallel` threads that only run the jobs the dispatcher hands them."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from worker.queue.jobs import ClaimedJob

_CLOSE = None


class SlotPool:
    """A fixed set of threads, each running one job at a time.

    `on_free` is called whenever a slot finishes a job (the dispatcher claims the next
    one at once); `on_crash` when a slot's thread dies (the daemon stops).
    """

    def __init__(
        self,
        size: int,
        run_job: Callable[[ClaimedJob], None],
        on_free: Callable[[], None],
        on_crash: Callable[[BaseException], None],
    ) -> None:
        self.size = size
        self._run_job = run_job
        self._on_free = on_free
        self._on_crash = on_crash
        self._jobs: queue.Queue[ClaimedJob | None] = queue.Queue()
        self._busy = 0  # handed out and not finished; changed under the lock
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._serve, name=f"slot-{i}", daemon=True) for i in range(size)
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

    def close(self, timeout: float | None = None) -> None:
        """Let every slot finish its job, then end the threads."""
        for _ in self._threads:
            self._jobs.put(_CLOSE)
        for thread in self._threads:
            thread.join(timeout)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _CLOSE:
                return
            try:
                self._run_job(job)
            except BaseException as exc:  # a dying slot stops the daemon instead of vanishing
                self._on_crash(exc)
                return
            finally:
                with self._lock:
                    self._busy -= 1
                self._on_free()
