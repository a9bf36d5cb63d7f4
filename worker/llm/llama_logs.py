"""llama.cpp's own log lines, routed into our logger."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_llama_log = logging.getLogger("edge_worker.llama_cpp")
_log_callback: Any = None
# Lists that receive every line while a `captured_lines()` block runs (a model load).
_listeners: list[list[str]] = []
_listeners_lock = threading.Lock()


@contextmanager
def captured_lines() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines (every level) while the block runs: what a load
    reports of its buffers, whatever the daemon's log level."""
    lines: list[str] = []
    with _listeners_lock:
        _listeners.append(lines)
    try:
        yield lines
    finally:
        with _listeners_lock:
            _listeners.remove(lines)


def route_llama_logs() -> None:
    """Send llama.cpp's own log lines to our logger (debug), not raw to stderr.

    The daemon's stderr is one JSON object per line; stray C-level lines would break that.
    """
    global _log_callback
    if _log_callback is not None:
        return
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", errors="replace").rstrip()
        if _listeners and line:
            with _listeners_lock:
                for listener in _listeners:
                    listener.append(line)
        if line:
            # ggml levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation.
            _llama_log.log({3: logging.WARNING, 4: logging.ERROR}.get(level, logging.DEBUG), line)

    _log_callback = forward  # keep a reference: ctypes callbacks must outlive their use
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
