"""`edge-worker` with faults made certain, for tests/acceptance/test_neighbours.py only
(not part of the product):

- a sweep that reaches a file named `hang-*` blocks forever: a hung fire (a stuck
  network file system); a fire counts as hung 1 s after sweep_max_seconds;
- no inotify watch can be added for a folder named `nowatch` (inotify's ENOSPC);
- the runner's first read of an input named `eio-*` fails with EIO (a transient error);
- with EW_TEST_NO_INET=1, IP sockets cannot be made (EAFNOSUPPORT), as under the shipped
  unit's RestrictAddressFamilies=AF_UNIX;
- while the file named by EW_TEST_DB_DOWN exists, reading a pipeline's last schedule fire
  fails as in a database outage (what a reload's catch-up reads).

    python tests/acceptance/neighbours_daemon.py run
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from watchdog.observers.api import BaseObserver

import worker.sources.schedules as schedules
from worker.cli import app as cli
from worker.io import safe_read
from worker.io.safe_read import InputRead, TransientReadError
from worker.queue.fires import Fire, FireStore
from worker.queue.outage import DatabaseUnavailable
from worker.run.kinds import base
from worker.sources.sweep import Sweeper
from worker.sources.walk import Found

_real_consider = Sweeper._consider
_real_schedule = BaseObserver.schedule
_real_last_fire = FireStore.last_fire
_failed_once: set[Path] = set()
_never = threading.Event()


def _consider(self: Sweeper, pipeline: str, match: Found, seen: Any) -> int | None:
    if match.path.name.startswith("hang-"):
        _never.wait()
    return _real_consider(self, pipeline, match, seen)


def _schedule(self: BaseObserver, handler: Any, path: str, **kwargs: Any) -> Any:
    if os.path.basename(str(path).rstrip("/")) == "nowatch":
        raise OSError(errno.ENOSPC, "inotify watch limit reached")
    return _real_schedule(self, handler, path, **kwargs)


def _read(path: Path, max_bytes: int, root: Path | None = None) -> InputRead:
    if path.name.startswith("eio-") and path not in _failed_once:
        _failed_once.add(path)
        raise TransientReadError(errno.EIO, "cannot read input: Input/output error")
    return safe_read.read_input_file(path, max_bytes, root)


def _last_fire(self: FireStore, pipeline: str) -> Fire | None:
    flag = os.environ.get("EW_TEST_DB_DOWN")
    if flag and os.path.exists(flag):
        raise DatabaseUnavailable("the database is down (test)")
    return _real_last_fire(self, pipeline)


class _NoInet(socket.socket):
    def __init__(
        self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None
    ) -> None:
        if fileno is None and family in (-1, socket.AF_INET, socket.AF_INET6):
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, type, proto, fileno)


if __name__ == "__main__":
    Sweeper._consider = _consider  # type: ignore[method-assign]
    schedules.STALL_MARGIN_SECONDS = 1.0
    schedules.STOP_WAIT_SECONDS = 1.0
    FireStore.last_fire = _last_fire  # type: ignore[method-assign]
    setattr(BaseObserver, "schedule", _schedule)  # noqa: B010
    setattr(base, "read_input_file", _read)  # noqa: B010  (the runner's read of a queued file)
    if os.environ.get("EW_TEST_NO_INET"):
        socket.socket = _NoInet  # type: ignore[misc]
    sys.argv = ["edge-worker", *sys.argv[1:]]
    cli.main()
