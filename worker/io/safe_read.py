"""The one safe reader for every read of an input file (watcher, sweeper, runner, retry).

Opens with `O_NOFOLLOW | O_NONBLOCK` (a symlink is refused, a FIFO swapped in cannot
block the reader), checks type and size on the open descriptor (no race with a rename
between check and read), and reads at most the limit. `read_beneath` also refuses a
link anywhere below a root folder (a swept tree), one component at a time.

What the input did wrong (a link, a FIFO, too big, no permission) is an InputError:
retrying cannot help. What the machine did (out of descriptors or memory, an I/O
error, an interrupted call) is a `TransientReadError`, an OSError: the job runs again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from worker.errors import InputError

# errno values of a read that may well work a moment later: not the input's fault.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ENOBUFS,
        errno.EIO,
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.ENOLCK,
        errno.EDEADLK,
    }
)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TransientReadError(OSError):
    """Reading an input failed for a reason that may pass (EMFILE, EIO, ENOMEM...)."""


def is_transient(exc: OSError) -> bool:
    """Whether an OSError of a read says more about the machine than about the input."""
    return exc.errno in TRANSIENT_ERRNOS


@contextlib.contextmanager
def _classified(what: str) -> Iterator[None]:
    """OSError -> FileNotFoundError (gone), TransientReadError (try again) or InputError."""
    try:
        yield
    except (FileNotFoundError, TransientReadError):
        raise
    except OSError as exc:
        if is_transient(exc):
            raise TransientReadError(exc.errno, f"cannot {what} input: {exc.strerror}") from None
        reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise InputError(f"cannot {what} input: {reason}") from None


@dataclass(frozen=True)
class InputRead:
    """One read of an input file: its bytes, and its owner's uid taken from the same open
    file (a second look at the name may find another file there by then)."""

    data: bytes
    owner: int


def _read_fd(fd: int, max_bytes: int) -> InputRead:
    with os.fdopen(fd, "rb") as handle, _classified("read"):
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError("not a regular file")
        if info.st_size > max_bytes:
            raise InputError(f"input is {info.st_size} bytes; max_input_bytes allows {max_bytes}")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"input is over {max_bytes} bytes; max_input_bytes allows {max_bytes}")
    return InputRead(data, info.st_uid)


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file, at most `max_bytes` of them.

    FileNotFoundError if it is gone; InputError (with the reason) for a symlink, a
    FIFO, a device, a folder, or a file over the limit; TransientReadError if the
    machine failed the read (out of descriptors, an I/O error...).
    """
    return read_input_file(path, max_bytes).data


def read_input_file(path: Path, max_bytes: int, root: Path | None = None) -> InputRead:
    """`read_regular_file` (with `root`: `read_beneath` of `path` below it), with the
    owner of the file that was read."""
    if root is not None:
        return _read_beneath(root, str(path.relative_to(root)), max_bytes)
    with _classified("open"):
        fd = os.open(path, _OPEN_FLAGS)
    return _read_fd(fd, max_bytes)


def read_beneath(root: Path, relative: str, max_bytes: int) -> bytes:
    """`read_regular_file` of `root/relative`, following no symbolic link below `root`.

    Each folder of `relative` is opened from the one above it with `O_NOFOLLOW`, so a
    folder swapped for a link between a check and the read is refused, not followed.
    `root` itself is the administrator's (it may be reached through links).
    """
    return _read_beneath(root, relative, max_bytes).data


def _read_beneath(root: Path, relative: str, max_bytes: int) -> InputRead:
    parts = PurePosixPath(relative).parts
    if not parts or any(part in ("", ".", "..", "/") for part in parts):
        raise InputError(f"invalid path below {root}: {relative!r}")
    with _classified("open"):
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            with _classified("open"):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    raise InputError(
                        f"cannot open input: {part!r} on its path is a symbolic link or "
                        "not a folder"
                    ) from None
            os.close(fd)
            fd = child
        with _classified("open"):
            file_fd = os.open(parts[-1], _OPEN_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    return _read_fd(file_fd, max_bytes)
