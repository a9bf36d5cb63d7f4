"""The console on a real SQLite store and the real HTTP port, without the model: pages
from the snapshot (no query per view), escaping, read-only 403s, the action guards."""

from __future__ import annotations

import http.client
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest

from worker.config import Settings
from worker.console.actions import Actions
from worker.console.app import Console, ConsoleSources
from worker.console.security import Sessions
from worker.ops.health import Health, HealthServer
from worker.ops.snapshot import SnapshotLoop
from worker.pipelines.pauses import Pauses
from worker.queue.jobs import JobStore, NewJob

pytestmark = pytest.mark.timeout(120)
TOKEN = "s3cret-token-for-tests-only"


@dataclass
class Served:
    port: int
    store: JobStore
    snapshot: SnapshotLoop
    pauses: Pauses
    server: HealthServer

    def request(
        self, method: str, path: str, body: dict[str, str] | None = None, **headers: str
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = urlencode(body).encode() if body is not None else None
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        if data is not None:
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        text = response.read().decode()
        got = {k.lower(): v for k, v in response.getheaders()}
        conn.close()
        return response.status, got, text


def serve(settings: Settings, store: JobStore, actions: bool) -> Served:
    snapshot = SnapshotLoop(store, settings.data_dir, 0.2)
    snapshot.start()
    pauses = Pauses(settings.data_dir / "paused")

    def health() -> Health:
        return Health(True, 0, 1, 0, None)

    sources = ConsoleSources(snapshot.current, snapshot.want_job, health, lambda: {}, pauses.paused)
    console = Console(
        sources,
        settings.data_dir,
        settings.max_input_bytes,
        Actions(store, pauses, 5, snapshot.refresh_now) if actions else None,
        Sessions(TOKEN) if actions else None,
    )
    server = HealthServer(0, lambda: b"m 1\n", health, console, max_connections=16, timeout=1.0)
    return Served(server.port, store, snapshot, pauses, server)


@pytest.fixture
def served(settings: Settings, store: JobStore) -> Iterator[Served]:
    s = serve(settings, store, actions=False)
    yield s
    s.server.close()
    s.snapshot.stop()


@pytest.fixture
def served_actions(settings: Settings, store: JobStore) -> Iterator[Served]:
    s = serve(settings, store, actions=True)
    yield s
    s.server.close()
    s.snapshot.stop()


def fail(store: JobStore, text: str, error: str) -> int:
    job_id = store.enqueue(NewJob("p", text))
    assert job_id is not None
    claimed = store.claim("me", 1, 30, pipelines=["p"])
    assert claimed and claimed[0].id == job_id
    assert store.fail(job_id, claimed[0].lease_token, error, retry_at=None)
    return job_id


def settle(served: Served) -> None:
    served.snapshot.refresh()


def test_pages_come_from_the_snapshot_and_escape_job_data(served: Served) -> None:
    store = served.store
    store.enqueue(NewJob("q", "<script>alert(1)</script>"))
    failed = fail(store, "x", "boom <b>bold</b>")
    settle(served)
    before = served.snapshot.queries.from_port
    for path in ("/", "/running", "/failures", "/batches", "/schedules", "/health"):
        code, headers, body = served.request("GET", path)
        assert code == 200, (path, body)
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert "<script>alert" not in body
    code, _, body = served.request("GET", f"/jobs/{failed}")
    assert code == 200
    assert "boom &lt;b&gt;bold&lt;/b&gt;" in body
    code, _, body = served.request("GET", "/failures?status=failed&pipeline=p")
    assert f'href="/jobs/{failed}"' in body
    assert served.snapshot.queries.from_port == before  # not one query from a page view
    code, _, body = served.request("GET", "/")
    queued = re.search(r'data-pipeline="q">.*?data-status="queued">(\d+)<', body, re.DOTALL)
    assert queued and queued.group(1) == "1"


def test_read_only_shows_no_action_and_refuses_every_post(served: Served) -> None:
    failed = fail(served.store, "x", "bad")
    settle(served)
    code, _, body = served.request("GET", f"/jobs/{failed}")
    assert code == 200 and "/actions/" not in body and "log in" not in body
    for path in ("/actions/retry", "/actions/cancel", "/login", "/actions/pause", "/x"):
        code, _, _ = served.request(
            "POST", path, {"job_id": str(failed)}, Origin=f"http://127.0.0.1:{served.port}"
        )
        assert code == 403, path
    assert served.store.get(failed).status == "failed"  # type: ignore[union-attr]


def login(served: Served) -> tuple[str, str]:
    origin = f"http://127.0.0.1:{served.port}"
    code, headers, _ = served.request(
        "POST", "/login", {"who": "ann", "token": TOKEN}, Origin=origin
    )
    assert code == 303, code
    cookie = headers["set-cookie"].split(";")[0]
    _, _, body = served.request("GET", "/", Cookie=cookie)
    match = re.search(r'name="csrf" value="([^"]+)"', body)
    assert match
    return cookie, match.group(1)


def test_actions_need_the_token_csrf_and_origin(served_actions: Served) -> None:
    s = served_actions
    origin = f"http://127.0.0.1:{s.port}"
    failed = fail(s.store, "x", "bad")
    code, _, _ = s.request("POST", "/login", {"who": "x", "token": "wrong"}, Origin=origin)
    assert code == 403
    cookie, csrf = login(s)
    form = {"job_id": str(failed), "csrf": csrf, "next": "/failures"}
    assert s.request("POST", "/actions/retry", form, Cookie=cookie)[0] == 403  # no Origin
    evil = "http://evil.example"
    assert s.request("POST", "/actions/retry", form, Cookie=cookie, Origin=evil)[0] == 403
    no_csrf = {"job_id": str(failed)}
    assert s.request("POST", "/actions/retry", no_csrf, Cookie=cookie, Origin=origin)[0] == 403
    assert s.request("POST", "/actions/retry", form, Origin=origin)[0] == 403  # no session
    assert s.store.get(failed).status == "failed"  # type: ignore[union-attr]
    code, headers, _ = s.request("POST", "/actions/retry", form, Cookie=cookie, Origin=origin)
    assert code == 303 and headers["location"].startswith("/failures?done=")
    assert s.store.get(failed).status == "queued"  # type: ignore[union-attr]
    form = {"job_id": str(failed), "csrf": csrf}
    assert s.request("POST", "/actions/cancel", form, Cookie=cookie, Origin=origin)[0] == 303
    assert s.store.get(failed).status == "cancelled"  # type: ignore[union-attr]
    pause = {"pipeline": "p", "csrf": csrf}
    assert s.request("POST", "/actions/pause", pause, Cookie=cookie, Origin=origin)[0] == 303
    assert s.pauses.paused() == {"p"}
    assert s.request("POST", "/actions/resume", pause, Cookie=cookie, Origin=origin)[0] == 303
    assert s.pauses.paused() == set()
    for _ in range(8):
        fail(s.store, "y", "bad")
    matching = {"status": "failed", "pipeline": "p", "limit": "100", "csrf": csrf}
    code, headers, _ = s.request(
        "POST", "/actions/retry-matching", matching, Cookie=cookie, Origin=origin
    )
    assert code == 303 and "5+job" in headers["location"]  # bounded by retry_limit (5)


def test_idle_connections_and_a_slow_client_do_not_block_healthz(served: Served) -> None:
    idle = []
    try:
        for _ in range(40):  # more than max_connections (16)
            idle.append(socket.create_connection(("127.0.0.1", served.port), timeout=5))
        slow = socket.create_connection(("127.0.0.1", served.port), timeout=5)
        idle.append(slow)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        started = time.monotonic()
        code, _, body = served.request("GET", "/healthz")
        assert code == 200 and '"ready": true' in body
        assert time.monotonic() - started < 1.0
        time.sleep(1.5)  # past http timeout: the slow client was cut off
        slow.settimeout(2)
        assert slow.recv(100) == b""
    finally:
        for sock in idle:
            sock.close()
    assert served.server.httpd.evicted > 0
