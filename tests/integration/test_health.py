"""The loopback port: `/healthz` (200 ready, 503 not, small JSON), `/metrics`, 404 else."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.ops.health import Health, HealthServer
from worker.ops.metrics import DaemonMetrics, MetricsPublisher
from worker.queue.jobs import JobStore, NewJob

pytestmark = pytest.mark.timeout(60)
KEYS = {"ready", "busy_slots", "slots", "queue_depth", "last_finished_at", "reason"}


def get(port: int, path: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


class Probe:
    """A health callable the test steers."""

    def __init__(self) -> None:
        self.state = Health(True, 1, 4, 3, "2026-11-28T12:00:00+00:00")
        self.fail = False

    def __call__(self) -> Health:
        if self.fail:
            raise RuntimeError("store gone")
        return self.state


@pytest.fixture
def server() -> Iterator[tuple[HealthServer, Probe]]:
    probe = Probe()
    served = HealthServer(0, lambda: b"edge_worker_up 1\n", probe)
    try:
        yield served, probe
    finally:
        served.close()


def test_healthz_is_200_when_ready_and_503_when_not(server: tuple[HealthServer, Probe]) -> None:
    http, probe = server
    code, content_type, body = get(http.port, "/healthz")
    assert (code, content_type) == (200, "application/json")
    data = json.loads(body)
    assert set(data) == KEYS
    assert data == {
        "ready": True,
        "busy_slots": 1,
        "slots": 4,
        "queue_depth": 3,
        "last_finished_at": "2026-11-28T12:00:00+00:00",
        "reason": None,
    }
    probe.state = Health(False, 0, 4, None, None, "database unavailable")
    code, _, body = get(http.port, "/healthz?verbose=1")  # a query string changes nothing
    assert code == 503
    assert json.loads(body)["reason"] == "database unavailable"
    probe.fail = True  # a failing check answers, and never says ready
    code, _, body = get(http.port, "/healthz")
    assert code == 503
    assert json.loads(body) == {"ready": False, "reason": "RuntimeError: store gone"}


def test_metrics_and_everything_else(server: tuple[HealthServer, Probe]) -> None:
    http, _probe = server
    code, content_type, body = get(http.port, "/metrics")
    assert code == 200 and content_type.startswith("text/plain")
    assert body == b"edge_worker_up 1\n"
    for path in ("/", "/health", "/healthz/extra", "/metrics.prom", "/../etc/passwd"):
        assert get(http.port, path)[0] == 404, path
    assert http.httpd.server_address[0] == "127.0.0.1"


def test_the_metrics_publisher_serves_healthz_on_its_port(store: JobStore, tmp_path: Path) -> None:
    store.enqueue(NewJob("p", "x"))
    metrics = DaemonMetrics(store, "me", "gemma", 2, 0.1)

    def health() -> Health:
        return Health(True, 0, 2, 1, None)

    publisher = MetricsPublisher(metrics, tmp_path / "metrics.prom", 60, port=0, health=health)
    publisher.start()
    try:
        assert publisher._server is not None
        port = publisher._server.port
        code, _, body = get(port, "/healthz")
        assert code == 200 and json.loads(body)["queue_depth"] == 1
        code, _, body = get(port, "/metrics")
        assert code == 200 and b"edge_worker_queue_depth 1.0" in body
        assert get(port, "/nope")[0] == 404
    finally:
        publisher.stop()
