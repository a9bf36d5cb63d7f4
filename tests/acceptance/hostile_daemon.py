"""`edge-worker` with two races made certain, for tests only: a FIFO is renamed over an
inbox file right after the watcher's lstat saw a regular file (`swap-*` names), or right
before the runner reads a queued file (`swaprun-*` names). Not part of the product.

    python tests/acceptance/hostile_daemon.py run
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from worker.cli import app as cli
from worker.io.safe_read import InputRead
from worker.run.kinds import document
from worker.sources.inbox import InboxWatcher

_real_enqueue = InboxWatcher._enqueue
_real_read_version = document.read_version  # type: ignore[attr-defined]


def swap_in_fifo(path: Path) -> None:
    """Rename a fresh FIFO over `path` (hidden name first, so the watcher ignores it)."""
    fifo = path.parent / f".fifo-{secrets.token_hex(4)}"
    os.mkfifo(fifo)
    os.replace(fifo, path)


def _enqueue(self: InboxWatcher, path: Path, info: os.stat_result) -> int | None:
    if path.name.startswith("swap-"):
        swap_in_fifo(path)
    return _real_enqueue(self, path, info)


def _read_version(
    path: Path, key: str | None, max_bytes: int, root: Path | None = None
) -> InputRead:
    if path.name.startswith("swaprun-"):
        swap_in_fifo(path)
    return _real_read_version(path, key, max_bytes, root)


if __name__ == "__main__":
    InboxWatcher._enqueue = _enqueue  # type: ignore[method-assign]
    document.read_version = _read_version  # type: ignore[attr-defined]
    sys.argv = ["edge-worker", *sys.argv[1:]]
    cli.main()
