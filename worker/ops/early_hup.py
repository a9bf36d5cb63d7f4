"""SIGHUP before the daemon is up: a `systemctl reload` during the model load must be a
reload once the daemon runs, never its end (SIGHUP's default action kills a process).

A handler that only records the request is installed first thing in `edge-worker run`,
before the heavy imports. A handler, not a blocked mask: numpy's OpenBLAS starts a
thread at import, and a process-wide signal goes to any thread that does not block it,
so a mask set later in the main thread is not enough. The daemon installs its own
handler once it exists and acts on a request recorded meanwhile (`pending`).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_requested = threading.Event()


def _record(_signum: int, _frame: FrameType | None) -> None:
    _requested.set()  # only a flag: signal handlers do nothing else


def install() -> None:
    """Record SIGHUPs from now on (call first thing, from the main thread)."""
    signal.signal(signal.SIGHUP, _record)


def pending() -> bool:
    """Whether a SIGHUP came before the daemon's own handler; clears the record."""
    found = _requested.is_set()
    _requested.clear()
    return found
