"""The one cached snapshot that the HTTP port answers from (`/healthz`, `/metrics`, the
console), refreshed every `snapshot_interval` seconds (a setting) by one background loop.

No request of the port queries the database: a page reads the last snapshot. A job
page asked for that the snapshot does not hold yet is noted (`want_job`, a bounded
set) and read with the next refresh. Every query made from the port's threads is
counted (`port_queries`), so a test, or an operator, can see that it stays at zero.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event

from worker.background import BackgroundLoop
from worker.logs import event
from worker.queue.jobs import JobStore
from worker.queue.snapshot_reads import TableState, read_table

WANTED_JOBS = 64
MAX_RATE = 4.0  # refreshes per second at most, however often one is asked for
HTTP_THREAD_PREFIX = "metrics-http"


@dataclass(frozen=True)
class LoopState:
    """One service loop as the health view shows it."""

    name: str
    alive: bool
    stalled: bool
    last_beat_age: float | None  # seconds since its last heartbeat, when it keeps one


@dataclass(frozen=True)
class ModelState:
    """A model this daemon holds (the model manager adds more; one today)."""

    name: str
    path: str
    memory_bytes: int | None
    resident: bool = True


@dataclass(frozen=True)
class Snapshot:
    """What the port serves until the next refresh."""

    table: TableState | None  # None: never read (the database did not answer yet)
    database_ok: bool
    database_error: str | None
    refreshed_at: datetime | None  # last successful read of the table
    attempted_at: datetime
    refresh_seconds: float
    disk_free_bytes: int | None
    disk_total_bytes: int | None
    loops: tuple[LoopState, ...] = ()
    models: tuple[ModelState, ...] = ()
    refreshes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def age(self, now: datetime) -> float | None:
        """Seconds since the table was last read."""
        if self.refreshed_at is None:
            return None
        return (now - self.refreshed_at).total_seconds()


class QueryCounter:
    """Counts the statements a database engine runs, and those run from the port's threads."""

    def __init__(self) -> None:
        self.total = 0
        self.from_port = 0
        self._lock = threading.Lock()

    def attach(self, engine: Any) -> None:
        sa_event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, *_args: Any, **_kwargs: Any) -> None:
        port = threading.current_thread().name.startswith(HTTP_THREAD_PREFIX)
        with self._lock:
            self.total += 1
            if port:
                self.from_port += 1


class SnapshotLoop(BackgroundLoop):
    """Reads the table every `interval` seconds into one immutable `Snapshot`."""

    name = "snapshot"
    event_prefix = "snapshot"
    stall_after = 120.0

    def __init__(
        self,
        store: JobStore,
        data_dir: Path,
        interval: float,
        loops: Callable[[], Sequence[BackgroundLoop]] = lambda: (),
        models: Callable[[], Sequence[ModelState]] = lambda: (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__()
        self.store = store
        self.data_dir = data_dir
        self.interval = interval
        self.loops = loops
        self.models = models
        self.clock = clock
        self.queries = QueryCounter()
        self.queries.attach(store.db)
        self._wanted: OrderedDict[int, None] = OrderedDict()
        self._kick = threading.Event()  # an action asks for a refresh now
        self._refreshing = threading.Lock()
        self._lock = threading.Lock()
        self._failing = False
        self._current = Snapshot(None, False, "not read yet", None, clock(), interval, None, None)

    # The port's side --------------------------------------------------------------
    def current(self) -> Snapshot:
        """The last snapshot (never blocks, never queries)."""
        return self._current

    def want_job(self, job_id: int) -> None:
        """Read this job's page at the next refresh (the last `WANTED_JOBS` asked for)."""
        with self._lock:
            self._wanted[job_id] = None
            self._wanted.move_to_end(job_id)
            while len(self._wanted) > WANTED_JOBS:
                self._wanted.popitem(last=False)

    def refresh_now(self) -> None:
        """Refresh soon (a job ended, an action), instead of at the next interval."""
        self._kick.set()

    # The loop's side ----------------------------------------------------------------
    def before_start(self) -> None:
        self.refresh()  # the port never answers from an empty snapshot when the table is up

    def step(self) -> float | None:
        started = time.monotonic()
        self.refresh()
        # Sleep `interval`, or less when asked (a job ended, an action): the port's numbers
        # follow the table within a moment, at most MAX_RATE refreshes a second.
        self._kick.wait(self.interval)
        self._kick.clear()
        return max(0.0, started + 1.0 / MAX_RATE - time.monotonic())

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._kick.set()  # out of the wait in `step` at once
        super().stop(timeout)

    def refresh(self) -> Snapshot:
        """Read everything once and publish it (one refresh at a time, so a later read is
        never overwritten by an earlier one)."""
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> Snapshot:
        now = self.clock()
        previous = self._current
        with self._lock:
            wanted = list(self._wanted)
        table, ok, error, refreshed_at = previous.table, True, None, previous.refreshed_at
        try:
            table = read_table(self.store, now, wanted)
            refreshed_at = now
            if self._failing:
                event("snapshot.db_recovered")
            self._failing = False
        except Exception as exc:  # the last good numbers stay; the snapshot says why
            ok, error = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            if not self._failing:
                event("snapshot.db_unavailable", logging.WARNING, error=error)
            self._failing = True
        free: int | None = None
        total: int | None = None
        try:
            usage = shutil.disk_usage(self.data_dir)
            free, total = int(usage.free), int(usage.total)
        except OSError:
            pass  # shown as unknown
        snapshot = Snapshot(
            table=table,
            database_ok=ok,
            database_error=error,
            refreshed_at=refreshed_at,
            attempted_at=now,
            refresh_seconds=self.interval,
            disk_free_bytes=free,
            disk_total_bytes=total,
            loops=tuple(_loop_state(loop) for loop in self.loops()),
            models=tuple(self.models()),
            refreshes=previous.refreshes + 1,
        )
        self._current = snapshot
        return snapshot


def _loop_state(loop: BackgroundLoop) -> LoopState:
    thread = getattr(loop, "_thread", None)
    alive = bool(thread is not None and thread.is_alive())
    beat = getattr(loop, "last_beat", None)  # a heartbeat, where the loop keeps one
    age = time.monotonic() - beat if isinstance(beat, float) else None
    return LoopState(loop.name, alive, loop.stalled(), age)
