"""systemd notification (sd_notify) over plain datagrams, and a watchdog that pings only
while the daemon's main loop makes progress."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


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
                sock.sendto("\n".join(lines).encode(), target)
        except OSError:
            pass  # systemd gone or socket unwritable: notification is best effort


class Progress:
    """A timestamp the main loop and the token loop touch; the watchdog reads it."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def touch(self) -> None:
        self.at = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.at


class Watchdog:
    """Pings `WATCHDOG=1` every `interval` while `progress` is fresh, with a STATUS= line.

    A hung decode stops touching `progress`, the pings stop, and systemd restarts us.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval: float,
        progress: Progress,
        status: Callable[[], str],
        stale_after: float,
    ) -> None:
        self.notifier = notifier
        self.interval = interval
        self.progress = progress
        self.status = status
        self.stale_after = stale_after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.progress.age() > self.stale_after:
                continue
            try:
                status = self.status()
            except Exception:
                status = "database unavailable"
            self.notifier.send("WATCHDOG=1", f"STATUS={status}")
