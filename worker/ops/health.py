"""The loopback HTTP port: `/metrics` (Prometheus text) and `/healthz` (JSON; 200 when
the daemon is ready, 503 otherwise). Any other path is 404."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Health:
    """What `/healthz` reports."""

    ready: bool
    busy_slots: int
    slots: int
    queue_depth: int | None  # None: the database did not answer
    last_finished_at: str | None  # ISO time of the last job this daemon finished
    reason: str | None = None  # why not ready


class HealthServer:
    """A small HTTP server on 127.0.0.1:`port`, in its own thread."""

    def __init__(
        self,
        port: int,
        metrics: Callable[[], bytes],
        health: Callable[[], Health] | None,
    ) -> None:

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                # A failing probe still gets an answer (no dropped connection), and a
                # failure never says "ready".
                try:
                    code, content_type, body = self._answer(path)
                except Exception as exc:
                    failure = {"ready": False, "reason": f"{type(exc).__name__}: {exc}"}
                    code = 503 if path == "/healthz" else 500
                    content_type, body = "application/json", json.dumps(failure).encode() + b"\n"
                self._send(code, content_type, body)

            def _answer(self, path: str) -> tuple[int, str, bytes]:
                if path == "/metrics":
                    return 200, "text/plain; version=0.0.4; charset=utf-8", metrics()
                if path == "/healthz" and health is not None:
                    state = health()
                    body = json.dumps(asdict(state)).encode() + b"\n"
                    return 200 if state.ready else 503, "application/json", body
                return 404, "text/plain; charset=utf-8", b"not found\n"

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # requests are not daemon events

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
