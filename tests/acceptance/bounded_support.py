"""What the bounded-work tests need besides a daemon: a systemd notify socket that
records each message with its time, a network that can be cut silently (a network
namespace whose link goes down: packets vanish, nothing is refused), a TCP proxy into
it, and the unit file's restart settings."""

from __future__ import annotations

import contextlib
import itertools
import re
import selectors
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "edge-worker.service"


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records every message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            self.messages.extend((now, line) for line in data.decode().splitlines())

    def pings(self, since: float = 0.0) -> list[float]:
        """Times of the WATCHDOG=1 messages after `since` (time.monotonic())."""
        return [t for t, m in self.messages if m == "WATCHDOG=1" and t >= since]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def longest_silence(pings: list[float], start: float, end: float) -> float:
    """The longest time without a ping between `start` and `end`."""
    marks = [start, *[p for p in pings if start <= p <= end], end]
    return max(b - a for a, b in itertools.pairwise(marks))


@dataclass
class RestartPolicy:
    """The unit's restart settings, read from the unit file."""

    restart_sec: float
    burst: int
    interval: float
    starts: list[float] = field(default_factory=list)

    @classmethod
    def from_unit(cls, unit: Path = UNIT) -> RestartPolicy:
        text = unit.read_text()

        def value(name: str) -> float:
            found = re.search(rf"^{name}=(\d+)\s*$", text, re.MULTILINE)
            assert found, f"{name} is not set in {unit}"
            return float(found.group(1))

        return cls(
            value("RestartSec"), int(value("StartLimitBurst")), value("StartLimitIntervalSec")
        )

    def start(self) -> None:
        """Record a start; AssertionError where systemd would refuse it (start-limit-hit)."""
        now = time.monotonic()
        self.starts.append(now)
        recent = [t for t in self.starts if now - t <= self.interval]
        assert len(recent) <= self.burst, (
            f"start-limit-hit: {len(recent)} starts within {self.interval:g} s "
            f"(StartLimitBurst={self.burst})"
        )


def can_make_namespaces() -> str | None:
    """Why a network namespace cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    name = f"ewchk{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class TcpProxy:
    """Forwards connections from `listen` to `target`, byte for byte, in threads."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.address = self.server.getsockname()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self._thread.join(2)


class CuttableNetwork:
    """A network namespace joined to this one by a veth pair, with a TCP proxy on this
    side to PostgreSQL. A daemon started in the namespace (`prefix`) reaches PostgreSQL
    at `host:port`; `cut()` takes the link down, so its packets vanish silently (as on a
    real network cut, nothing answers and nothing is refused), `mend()` brings it back."""

    def __init__(self, pg_host: str, pg_port: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = f"ew{tag}"
        self.outer = f"ewo{tag}"
        inner = f"ewi{tag}"
        octet = 16 + int(tag[:2], 16) % 200
        self.host = f"10.{octet}.{int(tag[2:4], 16)}.1"
        guest = f"10.{octet}.{int(tag[2:4], 16)}.2"
        commands = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.outer, "type", "veth", "peer", "name", inner],
            ["ip", "link", "set", inner, "netns", self.name],
            ["ip", "addr", "add", f"{self.host}/30", "dev", self.outer],
            ["ip", "link", "set", self.outer, "up"],
            ["ip", "netns", "exec", self.name, "ip", "addr", "add", f"{guest}/30", "dev", inner],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", inner, "up"],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
        ]
        try:
            for command in commands:
                subprocess.run(command, check=True, capture_output=True)
            self.proxy = TcpProxy((self.host, 0), (pg_host, pg_port))
        except BaseException:
            self.close()
            raise
        self.port = int(self.proxy.address[1])

    @property
    def prefix(self) -> list[str]:
        """Run a command inside the namespace: `[*prefix, command...]`."""
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self.outer, "down"], check=True)

    def mend(self) -> None:
        subprocess.run(["ip", "link", "set", self.outer, "up"], check=True)

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self.proxy.close()
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@contextlib.contextmanager
def cuttable_network(pg_host: str, pg_port: int) -> Iterator[CuttableNetwork]:
    network = CuttableNetwork(pg_host, pg_port)
    try:
        yield network
    finally:
        network.close()
