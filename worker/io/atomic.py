"""Publishing files atomically: a reader sees the whole file or none of it."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

# `.<start of the name>.<8 hex>.tmp`: what write_atomic leaves behind if the process dies.
_TEMP_NAME = re.compile(r"\..*\.[0-9a-f]{8}\.tmp", re.DOTALL)
TEMP_NAME_HEAD_BYTES = 100


def fsync_dir(folder: Path) -> None:
    """Make a rename or create in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(name: str) -> str:
    """A hidden temp name for `name` in the same folder, always within NAME_MAX (255 bytes).

    The head is cut by bytes, not characters: 100 CJK characters are 300 bytes.
    """
    head = os.fsencode(name)[:TEMP_NAME_HEAD_BYTES].decode("utf-8", errors="ignore")
    return f".{head}.{secrets.token_hex(4)}.tmp"


def write_atomic(path: Path, data: bytes, before_replace: Callable[[], None] | None = None) -> None:
    """Write `data` to `path`: temp file in the same folder, fsync, rename, fsync the folder.

    `before_replace` runs after the data is durable and just before the rename; if it raises,
    nothing is published. On any error (disk full, permissions) the temp file is removed
    and `path` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.name)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def is_stale_temp(name: str, mtime: float, now: float, max_age: float) -> bool:
    """Is `name` a temp file of write_atomic that nobody has written for `max_age` seconds?"""
    return _TEMP_NAME.fullmatch(name) is not None and now - mtime > max_age


def remove_stale_temps(folder: Path, max_age: float, now: float) -> list[Path]:
    """Delete write_atomic temp files in `folder` older than `max_age` (left by a killed
    process); returns what was removed. A live writer finishes in far less than `max_age`;
    if it ever did not, its rename fails and the job is retried, so nothing is lost."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if _TEMP_NAME.fullmatch(entry.name) is None:  # cheap: failed/ may hold many files
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if entry.is_file(follow_symlinks=False) and is_stale_temp(
            entry.name, info.st_mtime, now, max_age
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def move_durably(source: Path, target: Path) -> None:
    """Rename `source` to `target` (same file system) and make both folders durable."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)
