"""systemd notification (sd_notify) over plain datagrams, and a watchdog that pings only
while every thread at work is alive. (Not PostgreSQL's NOTIFY: that is `sources.pg_listen`.)"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from typing import Protocol

from worker.background import BackgroundLoop
from worker.liveness import LIVENESS, Liveness
from worker.logs import event


class Notifier:
    """Sends `KEY=value` datagrams to NOTIFY_SOCKET; does nothing when there is none."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait: a receiver that stopped reading (its queue full) must not
                # block the watchdog, or the shutdown that sends STOPPING=1.
                sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, target)
        except OSError:
            pass  # systemd gone, socket unwritable or full: notification is best effort


class Stallable(Protocol):
    """Something the watchdog asks besides the heartbeats."""

    def stalled(self) -> bool: ...


class Watchdog(BackgroundLoop):
    """Pings `WATCHDOG=1` every `interval` while no heartbeat is stalled (every service
    loop, slot and decode thread: `worker.liveness`), with a STATUS= line.

    The ping costs no database call: a watchdog that waited on a dropped database
    connection would get a healthy daemon killed. `status` must answer from memory.
    A stuck thread (a hung decode, an endless step) stops the pings, and systemd
    restarts us; an idle daemon, or one riding out a database outage, keeps pinging.
    """

    name = "watchdog"

    def __init__(
        self,
        notifier: Notifier,
        interval: float,
        status: Callable[[], str],
        registry: Liveness = LIVENESS,
        also: Sequence[Stallable] = (),
    ) -> None:
        super().__init__()
        self.notifier = notifier
        self.interval = interval
        self.status = status
        self.registry = registry
        self.also = also
        self._reported: list[str] = []

    def stalled(self) -> bool:
        # The watchdog's own step is a few microseconds; it never counts itself.
        return False

    def healthy(self) -> bool:
        """No heartbeat is stalled, and nothing in `also` (e.g. a hung schedule fire)."""
        stuck = self.registry.stalled()
        stuck += [
            getattr(item, "name", type(item).__name__) for item in self.also if item.stalled()
        ]
        if stuck != self._reported and stuck:
            event("watchdog.stalled", logging.ERROR, threads=stuck)
        self._reported = stuck
        return not stuck

    def step(self) -> float | None:
        if not self.healthy():
            return None
        self.notifier.send("WATCHDOG=1", f"STATUS={self.status()}")
        return None
