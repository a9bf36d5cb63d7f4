"""The models a daemon serves: which are loaded, what each takes, loading and unloading.

Each model has a record: its settings, the estimate made from its GGUF header before
it was ever loaded, what a load really took (measured: the larger of the process's
RSS growth and the buffers llama.cpp reported), and its state. The memory the daemon
counts for a model is the larger of the estimate and the measurement, from the first
load on.

The manager acts; it does not decide. What to load, and what to unload for it, is
`worker.run.scheduling`'s decision, which the dispatcher's router asks for each round.
The manager only refuses what must never happen: unloading a model while jobs of it
are in hand (one of its sequences may be running) or while it is loading.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from worker.errors import ModelError
from worker.llm.llama_logs import captured_lines
from worker.llm.loading import ModelConfig
from worker.llm.memory import EngineShape, Memory, MemoryEstimate, process_rss
from worker.logs import event

log = logging.getLogger(__name__)

# After a failed load, the model is tried again no sooner than this.
RETRY_LOAD_SECONDS = 60.0
# How long close() waits for a load in progress (a big model from a slow disk).
LOADER_JOIN_SECONDS = 300.0
# "load_tensors: CPU_Mapped model buffer size = 235.16 MiB", "... KV buffer size = ...".
_BUFFER = re.compile(r"\s(\S+)\s+(?:model|KV|RS|output|compute)\s+buffer size =\s*([\d.]+) MiB")


class ModelState(StrEnum):
    """Where a model is. `resident` and `idle` are loaded (idle: nothing in hand)."""

    UNLOADED = "unloaded"  # not loaded yet
    LOADING = "loading"
    RESIDENT = "resident"
    IDLE = "idle"
    EVICTED = "evicted"  # unloaded to make room for another
    FAILED = "failed"  # its last load failed; tried again later


def reported_buffers(lines: Iterable[str]) -> Memory:
    """The buffers llama.cpp logged while loading: host (CPU, CPU_Mapped, *_Host) and GPU."""
    host = gpu = 0.0
    for line in lines:
        match = _BUFFER.search(line)
        if match is None:
            continue
        size = float(match.group(2)) * (1 << 20)
        device = match.group(1)
        if device.startswith("CPU") or device.endswith("_Host"):
            host += size
        else:
            gpu += size
    return Memory(int(host), int(gpu))


@dataclass
class ModelRecord:
    """One served model (the manager's; read it through `ModelManager.views`)."""

    config: ModelConfig
    shape: EngineShape
    estimate: MemoryEstimate
    threads: int
    state: ModelState = ModelState.UNLOADED
    engine: Any = None
    measured: Memory | None = None
    rss_delta: int | None = None
    loads: int = 0
    evictions: int = 0
    in_hand: int = 0  # jobs claimed for it and not finished
    last_used: float = 0.0  # monotonic: when a job of it was last claimed or finished
    evicted_at: float | None = None
    error: str | None = None
    retry_at: float = 0.0
    load_seconds: float | None = None

    @property
    def memory(self) -> Memory:
        """What the budget counts for it: the larger of estimate and measurement."""
        estimated = Memory(self.estimate.host, self.estimate.gpu)
        return estimated if self.measured is None else estimated.larger(self.measured)


@dataclass(frozen=True)
class ModelView:
    """A model's state as the scheduler, metrics and status see it."""

    name: str
    kind: str
    state: ModelState
    memory: Memory
    estimate: MemoryEstimate
    measured: Memory | None
    in_hand: int
    parallel: int
    threads: int
    loads: int
    evictions: int
    last_used: float
    evicted_at: float | None
    retry_at: float
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def loaded(self) -> bool:
        return self.state in (ModelState.RESIDENT, ModelState.IDLE)


Opener = Callable[[ModelConfig, int], Any]


class ModelManager:
    """Loads and unloads the served models; hands out their engines."""

    def __init__(
        self,
        records: dict[str, ModelRecord],
        opener: Opener,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = records
        self._open = opener
        # Told when a model is loaded or unloaded (the daemon wakes its dispatcher).
        self.on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None
        # Counters of engines already closed, so the totals never go down.
        self._retired_stats: dict[str, int] = {}
        # Set at shutdown when a slot thread outlived shutdown_timeout (see close).
        self._leave_to_exit = False

    # Reading -------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._records)

    def config(self, name: str) -> ModelConfig:
        return self._records[name].config

    def views(self) -> list[ModelView]:
        with self._lock:
            return [self._view(name, r) for name, r in self._records.items()]

    def _view(self, name: str, r: ModelRecord) -> ModelView:
        state = r.state
        if state == ModelState.RESIDENT and r.in_hand == 0:
            state = ModelState.IDLE
        return ModelView(
            name=name,
            kind=r.config.kind,
            state=state,
            memory=r.memory,
            estimate=r.estimate,
            measured=r.measured,
            in_hand=r.in_hand,
            parallel=r.config.parallel,
            threads=r.threads,
            loads=r.loads,
            evictions=r.evictions,
            last_used=r.last_used,
            evicted_at=r.evicted_at,
            retry_at=r.retry_at,
            error=r.error,
        )

    def engine(self, name: str) -> Any:
        """The loaded engine of model `name`. The router claims a model's jobs only while
        it is loaded and holds it loaded while they run, so a handler always finds it."""
        with self._lock:
            record = self._records.get(name)
            if record is None:
                raise ModelError(f"model {name!r} is not served by this daemon")
            if record.engine is None or record.state != ModelState.RESIDENT:
                raise ModelError(f"model {name!r} is not loaded ({record.state})")
            return record.engine

    def loading(self) -> bool:
        return self._loader is not None and self._loader.is_alive()

    def load_seconds(self) -> float:
        """Seconds the loads so far took, together."""
        with self._lock:
            return sum(r.load_seconds or 0.0 for r in self._records.values())

    def engine_stats(self) -> dict[str, int]:
        """The generation engines' counters since start (decode calls, tokens), added up
        over every engine loaded so far."""
        with self._lock:
            engines = [r.engine for r in self._records.values() if r.engine is not None]
            totals = dict(self._retired_stats)
        for engine in engines:
            for key, value in _counters(engine).items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def _retire(self, engine: Any) -> None:
        for key, value in _counters(engine).items():
            self._retired_stats[key] = self._retired_stats.get(key, 0) + value

    # Jobs in hand ----------------------------------------------------------------
    def hold(self, name: str) -> None:
        """A job of `name` was claimed: it stays loaded until `release`."""
        with self._lock:
            record = self._records[name]
            record.in_hand += 1
            record.last_used = self._clock()

    def release(self, name: str) -> None:
        with self._lock:
            record = self._records[name]
            record.in_hand = max(0, record.in_hand - 1)
            record.last_used = self._clock()

    # Loading and unloading ----------------------------------------------------------
    def load(self, name: str) -> None:
        """Load `name` now, in this thread, measuring what it took. Raises ModelError."""
        with self._lock:
            record = self._records[name]
            if record.state in (ModelState.RESIDENT, ModelState.LOADING):
                return
            record.state = ModelState.LOADING
        self._load(name, record)

    def _load(self, name: str, record: ModelRecord) -> None:
        self.on_change()
        event(
            "model.loading",
            model=name,
            estimate=record.estimate.total,
            threads=record.threads,
            detail=record.estimate.describe(),
        )
        started = time.monotonic()
        before = process_rss()
        try:
            with captured_lines() as lines:
                engine = self._open(record.config, record.threads)
        except Exception as exc:
            message = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                record.state = ModelState.FAILED
                record.error = message
                record.retry_at = self._clock() + RETRY_LOAD_SECONDS
            event("model.load_failed", logging.ERROR, model=name, error=message)
            self.on_change()
            raise ModelError(f"model {name!r} failed to load: {message}") from exc
        rss_delta = max(0, process_rss() - before)
        reported = reported_buffers(lines)
        measured = Memory(max(rss_delta, reported.host), reported.gpu)
        with self._lock:
            record.engine = engine
            record.state = ModelState.RESIDENT
            record.measured = measured
            record.rss_delta = rss_delta
            record.loads += 1
            record.error = None
            record.last_used = self._clock()
            record.load_seconds = time.monotonic() - started
        event(
            "model.loaded",
            model=name,
            path=str(record.config.file.path),
            seconds=round(record.load_seconds, 2),
            loads=record.loads,
            estimate=record.estimate.total,
            measured=measured.host,
            measured_gpu=measured.gpu,
            llama_buffers=reported.host,
            rss_delta=rss_delta,
        )
        self.on_change()

    def start_loading(self, name: str) -> bool:
        """Load `name` in the background (one load at a time); False if one is running
        or the model is loaded or loading already."""
        with self._lock:
            record = self._records[name]
            if self.loading() or record.state in (ModelState.RESIDENT, ModelState.LOADING):
                return False
            record.state = ModelState.LOADING
            self._loader = threading.Thread(
                target=self._load_quietly, args=(name, record), name="model-loader", daemon=True
            )
            self._loader.start()
        return True

    def _load_quietly(self, name: str, record: ModelRecord) -> None:
        try:
            self._load(name, record)
        except ModelError:
            pass  # logged and recorded in the model's state; retried after a pause
        except Exception:  # pragma: no cover - load() turns errors into ModelError
            log.exception("loading %s", name)

    def unload(self, name: str, evicted: bool = True) -> bool:
        """Unload `name` if nothing of it is in hand and it is not loading; False if not."""
        with self._lock:
            record = self._records[name]
            if record.in_hand or record.state != ModelState.RESIDENT:
                return False
            engine, record.engine = record.engine, None
            self._retire(engine)
            record.state = ModelState.EVICTED if evicted else ModelState.UNLOADED
            if evicted:
                record.evictions += 1
                record.evicted_at = self._clock()
        engine.close()
        event("model.unloaded", model=name, evicted=evicted, loads=record.loads)
        self.on_change()
        return True

    def leave_engines_to_exit(self) -> None:
        """A slot thread did not finish within shutdown_timeout: it may still be inside
        llama.cpp with an engine's context, and freeing that context under it is a
        use-after-free (a segfault on the way out). `close` then frees nothing; the
        engines go with the process."""
        self._leave_to_exit = True

    def close(self) -> None:
        """Unload every model (after the slots stopped); waits for a load in progress.
        After `leave_engines_to_exit`, frees nothing and says so."""
        if self._leave_to_exit:
            with self._lock:
                loaded = [n for n, r in self._records.items() if r.engine is not None]
            event(
                "models.left_to_exit",
                logging.WARNING,
                models=loaded,
                reason="a slot did not finish within shutdown_timeout and may still use them",
            )
            return
        loader = self._loader
        if loader is not None:
            loader.join(LOADER_JOIN_SECONDS)
            if loader.is_alive():
                log.error(
                    "a model is still loading after %.0f s; left to the exit", LOADER_JOIN_SECONDS
                )
        for name, record in self._records.items():
            with self._lock:
                if record.state == ModelState.LOADING:
                    continue
                engine, record.engine = record.engine, None
                record.state = ModelState.UNLOADED
                if engine is not None:
                    self._retire(engine)
            if engine is not None:
                engine.close()
                event("model.unloaded", model=name, evicted=False, loads=record.loads)


def _counters(engine: Any) -> dict[str, int]:
    """An engine's integer counters (`BatchedEngine.stats`), if it has any."""
    stats = getattr(engine, "stats", None)
    if stats is None or not hasattr(stats, "__dataclass_fields__"):
        return {}
    values = {name: getattr(stats, name) for name in stats.__dataclass_fields__}
    return {k: v for k, v in values.items() if isinstance(v, int) and not isinstance(v, bool)}
