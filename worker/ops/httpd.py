"""The daemon's HTTP port: a small asyncio server in one thread, built to stay answering.

- A bounded number of connections (`max_connections`). At the bound, the connection
  that has waited longest without sending a complete request is closed to make room
  (idle and slow clients cannot lock others out); if every connection is being
  answered, the new one gets an immediate 503 and is closed.
- Per-connection deadlines: the request line and headers must arrive within `timeout`
  seconds in total (a client trickling one byte at a time is cut off), the body within
  the same time, and the response must be taken within it.
- One request per connection (`Connection: close`), small bounded headers and bodies.
- Handlers run on a small thread pool, so the event loop never waits on them; they are
  meant to answer from memory (a cached snapshot), never from a query per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Request:
    """One parsed request. Header names are lower case."""

    method: str
    target: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes = b""
    peer: str = ""

    def form(self) -> dict[str, str]:
        """An `application/x-www-form-urlencoded` body: the first value of each field."""
        text = self.body.decode("utf-8", errors="replace")
        return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}

    def arg(self, name: str, default: str = "") -> str:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    """What a handler answers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Response]


def text_response(status: int, text: str) -> Response:
    return Response(status, text.encode("utf-8"))


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class _Connection:
    writer: asyncio.StreamWriter
    opened: float
    answering: bool = False


class HttpServer:
    """Serves `handler` on `host:port` from its own thread until `close()`."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        max_connections: int = 64,
        timeout: float = 5.0,
        workers: int = 4,
        thread_name: str = "metrics-http",
    ) -> None:
        self.handler = handler
        self.max_connections = max(2, max_connections)
        self.timeout = timeout
        self.refused = 0  # connections answered 503 at once (all busy)
        self.evicted = 0  # idle connections closed to make room
        self.timed_out = 0  # connections cut off at their deadline
        self._connections: dict[int, _Connection] = {}
        self._ids = itertools.count()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name + "-handler")
        self._loop = asyncio.new_event_loop()
        started: concurrent.futures.Future[asyncio.Server] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(host, port, started), name=thread_name, daemon=True
        )
        self._thread.start()
        self._server = started.result(timeout=30)  # re-raises OSError (port in use, ...)
        sockname = self._server.sockets[0].getsockname()
        self.host = str(sockname[0])
        self.port = int(sockname[1])

    @property
    def server_address(self) -> tuple[str, int]:
        return self.host, self.port

    def open_connections(self) -> int:
        return len(self._connections)

    def close(self) -> None:
        """Stop accepting, drop open connections, end the thread."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_soon)
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # The loop's thread -------------------------------------------------------------
    def _run(
        self, host: str, port: int, started: concurrent.futures.Future[asyncio.Server]
    ) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            server = self._loop.run_until_complete(
                asyncio.start_server(self._serve, host, port, limit=MAX_HEADER_BYTES, backlog=128)
            )
            if not server.sockets:  # asyncio skips families it cannot open (a sandbox)
                server.close()
                raise OSError(errno.EAFNOSUPPORT, "no socket of this address family may be made")
        except BaseException as exc:
            started.set_exception(exc)
            self._loop.close()
            return
        started.set_result(server)
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for conn in list(self._connections.values()):
                conn.writer.transport.abort()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    def _stop_soon(self) -> None:
        self._server.close()
        self._loop.stop()

    def _make_room(self) -> bool:
        """At the bound: close the oldest connection still waiting for its request."""
        idle = [(c.opened, key) for key, c in self._connections.items() if not c.answering]
        if not idle:
            return False
        _, key = min(idle)
        self._connections.pop(key).writer.transport.abort()
        self.evicted += 1
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections and not self._make_room():
            self.refused += 1
            writer.write(_encode(Response(503, b"busy\n"), close=True))
            _close(writer)
            return
        key = next(self._ids)
        conn = _Connection(writer, time.monotonic())
        self._connections[key] = conn
        try:
            try:
                request = await asyncio.wait_for(self._read(reader, writer), self.timeout)
            except TimeoutError:
                self.timed_out += 1
                return
            except _BadRequest as bad:
                response = text_response(bad.status, f"{bad}\n")
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            else:
                conn.answering = True
                response = await self._loop.run_in_executor(self._pool, self._answer, request)
            writer.write(_encode(response, close=True))
            try:
                await asyncio.wait_for(writer.drain(), self.timeout)
            except (TimeoutError, ConnectionError):
                self.timed_out += 1
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.pop(key, None)
            _close(writer)

    def _answer(self, request: Request) -> Response:
        try:
            return self.handler(request)
        except Exception as exc:  # a handler's bug answers 500, never kills the port
            return text_response(500, f"internal error: {type(exc).__name__}\n")

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "request headers too large") from None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "bad request line")
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "bad header line")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "transfer-encoding" in headers:
            raise _BadRequest(411, "a body needs a Content-Length")
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise _BadRequest(400, "bad Content-Length") from None
            if length < 0 or length > MAX_BODY_BYTES:
                raise _BadRequest(413, "body too large")
            body = await reader.readexactly(length)
        split = urlsplit(target)
        peer = writer.get_extra_info("peername")
        return Request(
            method=method.upper(),
            target=target,
            path=split.path or "/",
            query=parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            body=body,
            peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "",
        )


def _close(writer: asyncio.StreamWriter) -> None:
    # What a client has not taken by now it never will: drop it rather than hold the socket.
    if writer.transport.get_write_buffer_size():
        writer.transport.abort()
    else:
        writer.close()


def _encode(response: Response, close: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body
