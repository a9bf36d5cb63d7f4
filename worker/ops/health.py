"""The HTTP port's routes: `/metrics` (Prometheus text), `/healthz` (JSON; 200 when the
daemon is ready, 503 otherwise) and, when enabled, the console (`worker.console`). Any
other path is 404.

Both `/metrics` and `/healthz` answer from memory: the job-table numbers come from the
cached snapshot (`worker.ops.snapshot`), never from a query per request. The server
itself (timeouts, bounded connections) is `worker.ops.httpd`.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from worker.ops.httpd import Handler, HttpServer, Request, Response

JSON = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Health:
    """What `/healthz` reports."""

    ready: bool
    busy_slots: int
    slots: int
    queue_depth: int | None  # None: the database did not answer
    last_finished_at: str | None  # ISO time of the last job this daemon finished
    reason: str | None = None  # why not ready


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host names the port answers to: loopback, the bind address (unless it is a
    wildcard), this machine's names, and `extra` (setting http_allowed_hosts)."""
    names = set(LOOPBACK_NAMES) | {name.lower() for name in extra}
    if bind not in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard names no host
        names.add(bind.lower())
    names.add(socket.gethostname().lower())  # no getfqdn(): no resolver on a closed network
    return frozenset(names)


def host_name(header: str) -> str:
    """The name in a Host header, without the port (`[::1]:8080` gives `::1`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _known_host(name: str, hosts: frozenset[str]) -> bool:
    # An address is never a rebinding: the page's origin would be that address itself, so
    # a scraper that names the box by its IP (bind 0.0.0.0) is answered.
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name in hosts
    return True


def port_handler(
    metrics: Callable[[], bytes],
    health: Callable[[], Health] | None,
    console: Handler | None = None,
    hosts: frozenset[str] | None = None,
) -> Handler:
    """The port's router: `/metrics`, `/healthz`, then the console (if any), else 404.

    With `hosts`, a request naming another host name (not an address) is refused (421):
    a web page whose name an attacker points at 127.0.0.1 (DNS rebinding) cannot read
    the port."""

    def handle(request: Request) -> Response:
        path = request.path
        host = request.headers.get("host")
        if hosts is not None and host is not None and not _known_host(host_name(host), hosts):
            return Response(421, b"unknown host name (setting http_allowed_hosts)\n")
        if path == "/healthz" and health is not None:
            if request.method not in ("GET", "HEAD"):
                return Response(405, b"method not allowed\n", headers=[("Allow", "GET")])
            # A failing probe still gets an answer, and a failure never says "ready".
            try:
                state = health()
            except Exception as exc:
                failure = {"ready": False, "reason": f"{type(exc).__name__}: {exc}"}
                return Response(503, json.dumps(failure).encode() + b"\n", JSON)
            body = json.dumps(asdict(state)).encode() + b"\n"
            return Response(200 if state.ready else 503, body, JSON)
        if path == "/metrics":
            if request.method not in ("GET", "HEAD"):
                return Response(405, b"method not allowed\n", headers=[("Allow", "GET")])
            try:
                return Response(200, metrics(), METRICS_TYPE)
            except Exception as exc:
                return Response(500, f"{type(exc).__name__}: {exc}\n".encode())
        if console is not None:
            return console(request)
        return Response(404, b"not found\n")

    return handle


class HealthServer:
    """The port on `host:port` (127.0.0.1 unless the operator binds elsewhere)."""

    def __init__(
        self,
        port: int,
        metrics: Callable[[], bytes],
        health: Callable[[], Health] | None,
        console: Handler | None = None,
        host: str = "127.0.0.1",
        max_connections: int = 64,
        timeout: float = 5.0,
        extra_hosts: Iterable[str] = (),
    ) -> None:
        self.httpd = HttpServer(
            host,
            port,
            port_handler(metrics, health, console, allowed_hosts(host, extra_hosts)),
            max_connections=max_connections,
            timeout=timeout,
        )
        self.port = self.httpd.port

    def close(self) -> None:
        self.httpd.close()
