"""systemd notification (sd_notify) over plain datagrams, and a watchdog that pings only
while the daemon makes progress. (Not PostgreSQL's NOTIFY: that is `sources.pg_listen`.)"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from worker.background import BackgroundLoop, Progress


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


class Watchdog(BackgroundLoop):
    """Pings `WATCHDOG=1` every `interval` while `progress` is fresh and no background loop
    is stalled, with a STATUS= line.

    A hung decode stops touching `progress`, a stuck loop (a blocked read, a database
    call that never returns) shows as stalled: the pings stop, and systemd restarts us.
    """

    name = "watchdog"

    def __init__(
        self,
        notifier: Notifier,
        interval: float,
        progress: Progress,
        status: Callable[[], str],
        stale_after: float,
        loops: Sequence[BackgroundLoop] = (),
    ) -> None:
        super().__init__()
        self.notifier = notifier
        self.interval = interval
        self.progress = progress
        self.status = status
        self.stale_after = stale_after
        self.loops = loops

    def healthy(self) -> bool:
        """Fresh progress and no stalled loop."""
        if self.progress.age() > self.stale_after:
            return False
        return not any(loop.stalled() for loop in self.loops)

    def step(self) -> float | None:
        if not self.healthy():
            return None
        try:
            status = self.status()
        except Exception:
            status = "database unavailable"
        self.notifier.send("WATCHDOG=1", f"STATUS={status}")
        return None
