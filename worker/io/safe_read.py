"""The one safe reader for every read of an input file (watcher, sweeper, runner, retry).

Opens with `O_NOFOLLOW | O_NONBLOCK` (a symlink is refused, a FIFO swapped in cannot
block the reader), checks type and size on the open descriptor (no race with a rename
between check and read), and reads at most the limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from worker.errors import InputError


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file, at most `max_bytes` of them.

    FileNotFoundError if it is gone; InputError (with the reason) for a symlink, a
    FIFO, a device, a folder, or a file over the limit.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == 40 else exc.strerror
        raise InputError(f"cannot open input: {reason}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError("not a regular file")
        if info.st_size > max_bytes:
            raise InputError(f"input is {info.st_size} bytes; max_input_bytes allows {max_bytes}")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"input is over {max_bytes} bytes; max_input_bytes allows {max_bytes}")
    return data
