"""Prometheus metrics: a text file for node_exporter's textfile collector, optionally a port.

Two kinds of numbers, on a registry of our own (never prometheus_client's global one):

- this daemon's counters (tokens, jobs processed, durations, model load time), fed
  by explicit calls from the runner and the recovery sweep (`DaemonMetrics` is
  their `JobObserver`);
- the job table's state (jobs by pipeline and status, queue depth, this daemon's
  busy slots): in a daemon from the HTTP port's cached snapshot (`worker.ops.snapshot`,
  refreshed every `snapshot_interval`), so neither a scrape nor a file write queries
  the database; without one, read at each collection. With several daemons
  on one PostgreSQL table every daemon reports the same table-wide job gauges; sum
  the counters across daemons, not the gauges.

The file is rewritten atomically (temp file, fsync, rename) every
`metrics_interval` seconds and once more at exit, so a scraper never reads half. The
optional loopback port serves `/metrics` and `/healthz` (see `worker.ops.health`).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.background import BackgroundLoop
from worker.io.atomic import write_atomic
from worker.logs import event
from worker.ops.health import Health, HealthServer
from worker.ops.httpd import Handler
from worker.queue.jobs import JobStore
from worker.queue.models import STATUSES
from worker.queue.views import (
    THROUGHPUT_WINDOW,
    TOKENS_PER_SECOND_HELP,
    Throughput,
    queue_depth,
    running_jobs,
)

# LLM jobs take from a fraction of a second to many minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))
RATE_WINDOW_SECONDS = THROUGHPUT_WINDOW.total_seconds()
ENGINE_COUNTERS = {
    "decode_calls": "llama_decode calls since start",
    "prompt_tokens_evaluated": "Prompt tokens the engine computed since start",
    "prompt_tokens_reused": "Prompt tokens copied from the shared-prefix cache since start",
    "generated_tokens": "Tokens sampled since start",
}


class MetricsError(Exception):
    """The metrics port cannot be opened (in use, not allowed)."""


def port_hint(exc: OSError) -> str:
    """What to do about a port that cannot be opened, for the start-up error (exit 2,
    which the units do not restart: a person has to act)."""
    if exc.errno in (errno.EAFNOSUPPORT, errno.EPERM, errno.EACCES):
        return (
            "; under the shipped systemd unit the daemon may open no IP socket: install "
            "the drop-in systemd/examples/metrics-port.conf (docs/systemd.md), or unset "
            "metrics_port"
        )
    if exc.errno == errno.EADDRINUSE:
        return "; another program holds the port: choose another metrics_port"
    return ""


@dataclass(frozen=True)
class TableGauges:
    """The job-table numbers of one collection: counts by (pipeline, status), and how
    many jobs this daemon is running."""

    counts: dict[tuple[str, str], int]
    busy: int


def live_table(store: JobStore, worker_id: str) -> Callable[[], TableGauges | None]:
    """Gauges read from the table at each collection (the default without a snapshot)."""

    def read() -> TableGauges | None:
        try:
            return TableGauges(store.counts(), len(running_jobs(store, owner=worker_id)))
        except Exception:  # the database is away: say so, keep the daemon's own numbers
            return None

    return read


class _DatabaseCollector(Collector):
    """Gauges of the job table, from `table` (the port's snapshot in a daemon)."""

    def __init__(self, table: Callable[[], TableGauges | None]) -> None:
        self.table = table

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("edge_worker_database_up", "1 if the job table could be read"),
            GaugeMetricFamily(
                "edge_worker_jobs",
                "Jobs in the table by pipeline and status (table-wide)",
                labels=["pipeline", "status"],
            ),
            GaugeMetricFamily("edge_worker_queue_depth", "Queued jobs, all pipelines"),
            GaugeMetricFamily("edge_worker_busy_slots", "Jobs this daemon is running now"),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()  # names only: registering must not query the database

    def collect(self) -> Iterable[Metric]:
        up, jobs, depth, busy = self._families()
        state = self.table()
        if state is None:
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        counts = state.counts
        for pipeline in sorted({p for p, _ in counts}):
            for status in STATUSES:
                jobs.add_metric([pipeline, status], counts.get((pipeline, status), 0))
        depth.add_metric([], queue_depth(counts))
        busy.add_metric([], state.busy)
        return [up, jobs, depth, busy]


class DaemonMetrics:
    """The registry of one daemon and what feeds it."""

    def __init__(
        self,
        store: JobStore,
        worker_id: str,
        model: str,
        slots: int,
        model_load_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        table: Callable[[], TableGauges | None] | None = None,
    ) -> None:
        # No `*_created` series: node_exporter's textfile collector has no use for them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.clock = clock
        self._recent: deque[tuple[float, int]] = deque()  # (when, generated tokens)
        self._lock = threading.Lock()
        self._last_finished: datetime | None = None
        reg = self.registry
        Info("edge_worker_daemon", "This daemon", registry=reg).info(
            {"worker": worker_id, "model": model}
        )
        Gauge("edge_worker_slots", "Jobs this daemon can run at once", registry=reg).set(slots)
        load = Gauge("edge_worker_model_load_seconds", "Seconds to load the model", registry=reg)
        load.set(model_load_seconds)
        self.processed = Counter(
            "edge_worker_jobs_processed",
            "Jobs this daemon finished, by outcome (succeeded, failed, retrying)",
            ["pipeline", "outcome"],
            registry=reg,
        )
        self.prompt_tokens = Counter(
            "edge_worker_prompt_tokens",
            "Prompt tokens of succeeded jobs",
            ["pipeline"],
            registry=reg,
        )
        self.generated_tokens = Counter(
            "edge_worker_generated_tokens",
            "Generated tokens of succeeded jobs",
            ["pipeline"],
            registry=reg,
        )
        self.duration = Histogram(
            "edge_worker_job_duration_seconds",
            "Claim to success, seconds",
            ["pipeline"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.recovered = Counter(
            "edge_worker_jobs_recovered", "Expired leases this daemon requeued", registry=reg
        )
        Gauge(
            "edge_worker_tokens_per_second",
            f"{TOKENS_PER_SECOND_HELP}, this daemon's jobs",
            registry=reg,
        ).set_function(self.tokens_per_second)
        reg.register(_DatabaseCollector(table or live_table(store, worker_id)))
        self._engine_counters = {
            name: Gauge(f"edge_worker_engine_{name}", text, registry=reg)
            for name, text in ENGINE_COUNTERS.items()
        }

    def watch_engine(self, stats: Callable[[], Mapping[str, int]]) -> None:
        """Export the engine's counters (decode calls, prompt tokens evaluated and reused,
        generated tokens), read at each collection."""
        for name, gauge in self._engine_counters.items():
            gauge.set_function(_reader(stats, name))

    def watch_port(self, queries: Callable[[], int], refreshes: Callable[[], int]) -> None:
        """Export how often the snapshot was read, and the statements run from the HTTP
        port's own threads (zero unless an operator's action changed something)."""
        Gauge(
            "edge_worker_port_db_queries",
            "Database statements run from the HTTP port's threads since start (console "
            "actions only; every page, probe and scrape is answered from the snapshot)",
            registry=self.registry,
        ).set_function(lambda: float(queries()))
        Gauge(
            "edge_worker_snapshot_refreshes",
            "Reads of the job table into the HTTP port's snapshot since start",
            registry=self.registry,
        ).set_function(lambda: float(refreshes()))

    # JobObserver -----------------------------------------------------------------
    def job_succeeded(
        self, pipeline: str, prompt_tokens: int, completion_tokens: int, seconds: float
    ) -> None:
        self.processed.labels(pipeline, "succeeded").inc()
        self.prompt_tokens.labels(pipeline).inc(prompt_tokens)
        self.generated_tokens.labels(pipeline).inc(completion_tokens)
        self.duration.labels(pipeline).observe(seconds)
        with self._lock:
            self._recent.append((self.clock(), completion_tokens))
            self._last_finished = datetime.now(UTC)

    def job_failed(self, pipeline: str, final: bool) -> None:
        self.processed.labels(pipeline, "failed" if final else "retrying").inc()
        if final:
            with self._lock:
                self._last_finished = datetime.now(UTC)

    def last_finished_at(self) -> datetime | None:
        """When this daemon last finished a job (succeeded or finally failed)."""
        with self._lock:
            return self._last_finished

    def jobs_recovered(self, count: int) -> None:
        self.recovered.inc(count)

    def tokens_per_second(self) -> float:
        """This daemon's share of `edge-worker status`'s tokens/s (`Throughput`): what its
        jobs that succeeded in the last window generated, over the window."""
        cutoff = self.clock() - RATE_WINDOW_SECONDS
        with self._lock:
            while self._recent and self._recent[0][0] < cutoff:
                self._recent.popleft()
            jobs = len(self._recent)
            tokens = sum(t for _, t in self._recent)
        return Throughput(RATE_WINDOW_SECONDS, jobs, tokens).tokens_per_second

    def render(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)


def _reader(stats: Callable[[], Mapping[str, int]], name: str) -> Callable[[], float]:
    return lambda: float(stats().get(name, 0))


class MetricsPublisher(BackgroundLoop):
    """Writes the metrics file periodically and at exit; serves the optional loopback port."""

    name = "metrics"

    def __init__(
        self,
        metrics: DaemonMetrics,
        path: Path,
        interval: float,
        port: int | None,
        health: Callable[[], Health] | None = None,
        console: Handler | None = None,
        host: str = "127.0.0.1",
        max_connections: int = 64,
        timeout: float = 5.0,
        extra_hosts: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.extra_hosts = extra_hosts
        self.metrics = metrics
        self.path = path
        self.interval = interval
        self.port = port
        self.health = health
        self.console = console
        self.host = host
        self.max_connections = max_connections
        self.timeout = timeout
        self._server: HealthServer | None = None
        self._write_failing = False

    def before_start(self) -> None:
        """Open the loopback port (if set) and write the file once. Raises MetricsError."""
        if self.port is not None:
            try:
                # Loopback by default (http_bind): for a local scraper or an SSH tunnel.
                self._server = HealthServer(
                    self.port,
                    self.metrics.render,
                    self.health,
                    self.console,
                    self.host,
                    self.max_connections,
                    self.timeout,
                    self.extra_hosts,
                )
            except OSError as exc:
                raise MetricsError(
                    f"cannot serve metrics on {self.host}:{self.port} "
                    f"(settings metrics_port, http_bind; EDGE_WORKER_METRICS_PORT): {exc}"
                    f"{port_hint(exc)}"
                ) from None
        self.write()
        event(
            "metrics.started",
            file=str(self.path),
            port=self.port,
            bind=self.host if self.port is not None else None,
            console=self.console is not None,
        )

    def write(self) -> None:
        """Rewrite the file now; a failure is logged once and retried next time."""
        try:
            write_atomic(self.path, self.metrics.render())
        except OSError as exc:
            if not self._write_failing:
                event("metrics.write_failed", logging.WARNING, file=str(self.path), error=str(exc))
            self._write_failing = True
            return
        self._write_failing = False

    def step(self) -> float | None:
        self.write()
        return None

    def after_stop(self) -> None:
        """Close the port, then write the final numbers."""
        if self._server is not None:
            self._server.close()
        self.write()
