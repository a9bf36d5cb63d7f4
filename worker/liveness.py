"""Liveness: one heartbeat per thread that does work (each service loop, each slot, the
decode thread), and the one question the systemd watchdog asks: is any of them stuck?

A heartbeat is *busy* while its thread works on something (a loop's step, a slot's job,
a llama.cpp decode call) and idle while it waits for work. Only a busy heartbeat can
stall: busy with no `beat()` for longer than its `stall_after`. So an idle daemon is
alive, a slot that waits on the database, the parsing sandbox or the engine is alive as
long as the wait beats (every wait here is bounded and beats at least once a second),
and a thread caught in an endless step is not. Liveness is not "a token was generated
lately": parsing a large file or riding out a database outage is work too.

A thread binds its heartbeat (`bind`), so code deep in a call (the recorder's retry
loop, the sandbox's wait) can beat the caller's heartbeat with `beat()` without being
handed it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

_local = threading.local()


class Heartbeat:
    """One thread's sign of life."""

    def __init__(self, name: str, stall_after: float) -> None:
        self.name = name
        self.stall_after = stall_after
        self._beat_at = time.monotonic()
        self._busy_since: float | None = None

    def beat(self) -> None:
        """Still working (or still waiting on something bounded)."""
        self._beat_at = time.monotonic()

    def busy(self) -> None:
        """Work starts: from now on, a silence longer than `stall_after` is a stall."""
        now = time.monotonic()
        self._beat_at = now
        self._busy_since = now

    def idle(self) -> None:
        """Work ended: waiting for more is not a stall."""
        self._beat_at = time.monotonic()
        self._busy_since = None

    def silent_for(self, now: float | None = None) -> float:
        """Seconds since the last beat."""
        return (time.monotonic() if now is None else now) - self._beat_at

    def stalled(self, now: float | None = None) -> bool:
        """Busy, and silent for longer than `stall_after`."""
        return self._busy_since is not None and self.silent_for(now) > self.stall_after


@dataclass(frozen=True)
class HeartbeatView:
    """What status pages show of a heartbeat."""

    name: str
    busy: bool
    silent_seconds: float
    stalled: bool


class Liveness:
    """The heartbeats of a daemon's threads."""

    def __init__(self) -> None:
        self._beats: dict[int, Heartbeat] = {}
        self._lock = threading.Lock()

    def register(self, name: str, stall_after: float) -> Heartbeat:
        """A new heartbeat, counted until `unregister`."""
        heartbeat = Heartbeat(name, stall_after)
        with self._lock:
            self._beats[id(heartbeat)] = heartbeat
        return heartbeat

    def unregister(self, heartbeat: Heartbeat) -> None:
        with self._lock:
            self._beats.pop(id(heartbeat), None)

    def stalled(self) -> list[str]:
        """Names of the heartbeats that are stalled now."""
        now = time.monotonic()
        with self._lock:
            beats = list(self._beats.values())
        return sorted(h.name for h in beats if h.stalled(now))

    def views(self) -> list[HeartbeatView]:
        """Every heartbeat, by name."""
        now = time.monotonic()
        with self._lock:
            beats = list(self._beats.values())
        return sorted(
            (
                HeartbeatView(h.name, h._busy_since is not None, h.silent_for(now), h.stalled(now))
                for h in beats
            ),
            key=lambda v: v.name,
        )


# The daemon's threads register here; tests that need isolation make their own.
LIVENESS = Liveness()


def bind(heartbeat: Heartbeat | None) -> None:
    """Make `heartbeat` the calling thread's own (None: unbind)."""
    _local.heartbeat = heartbeat


def current() -> Heartbeat | None:
    """The calling thread's heartbeat, if it bound one."""
    found: Heartbeat | None = getattr(_local, "heartbeat", None)
    return found


def beat() -> None:
    """Beat the calling thread's heartbeat (nothing if it has none)."""
    heartbeat = current()
    if heartbeat is not None:
        heartbeat.beat()
