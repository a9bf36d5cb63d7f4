"""Publishing files atomically: a reader sees the whole file or none of it."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from worker import liveness
from worker.errors import InputError

# `.<start of the name>.<8 hex>.tmp`: what write_atomic leaves behind if the process dies.
_TEMP_NAME = re.compile(r"\..*\.[0-9a-f]{8}\.tmp", re.DOTALL)
TEMP_NAME_HEAD_BYTES = 100
# Outputs are readable by the owner's group, never by everyone, whatever the umask.
DEFAULT_FILE_MODE = 0o640
# errno values that say a file name itself is unusable: an input error, not retried.
NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ})
# How long a guarded write (`write_atomic(keep=...)`) waits for another one in its folder.
FOLDER_LOCK_SECONDS = 10.0


def folder_mode(file_mode: int) -> int:
    """The mode for folders holding files of `file_mode`: search (x) wherever read (r)
    is allowed, so 0640 gives 0750 and 0644 gives 0755."""
    return file_mode | ((file_mode & 0o444) >> 2)


@contextlib.contextmanager
def name_errors_are_input_errors(path: Path) -> Iterator[None]:
    """Turn an OSError about the name of `path` (too long, bytes the file system refuses)
    into an InputError: retrying cannot help, unlike a full disk."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NAME_ERRNOS:
            raise
        reason = "file name too long" if exc.errno == errno.ENAMETOOLONG else exc.strerror
        raise InputError(f"cannot write {path.name!r}: {reason}") from None


def make_folder(folder: Path, mode: int) -> None:
    """Create `folder` and any missing parents with exactly `mode` (not the umask's), plus
    setgid where the parent has it (a shared folder's group, e.g. the submitters', then
    reaches everything created below it, also folders made after a reload); existing
    folders are left as they are."""
    missing: list[Path] = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode)
            # mkdir's mode is masked by the umask, and a plain chmod would drop the setgid
            # bit the kernel copied from the parent: set both explicitly.
            inherited = os.stat(path.parent).st_mode & stat.S_ISGID
            os.chmod(path, mode | inherited)


def fsync_dir(folder: Path) -> None:
    """Make a rename or create in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Names of the temp files this process is writing now (random, so unique): not stale.
_writing: set[str] = set()
_writing_lock = threading.Lock()


def temp_name(name: str) -> str:
    """A hidden temp name for `name` in the same folder, always within NAME_MAX (255 bytes).

    The head is cut by bytes, not characters: 100 CJK characters are 300 bytes.
    """
    head = os.fsencode(name)[:TEMP_NAME_HEAD_BYTES].decode("utf-8", errors="ignore")
    return f".{head}.{secrets.token_hex(4)}.tmp"


# Guarded writes (`write_atomic(keep=...)`), one lock per folder. In-process locks are
# enough: only a file job writes the guarded files, file jobs run on the daemon of the
# data dir they came from, and one daemon per data dir is the deployment rule (the
# running marker detects a second one; it does not stop it). The CLI never writes them.
# A lock of the folder itself (flock) would not do: submitters may open outbox folders
# (group-readable), and one that held a flock would stall every status write.
_folder_locks: dict[str, threading.Lock] = {}
_folder_locks_lock = threading.Lock()


@contextlib.contextmanager
def folder_lock(folder: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold this process's lock of guarded writes in `folder`: they check and rename one
    at a time. TimeoutError (an OSError) if another thread keeps it past `timeout`
    seconds (default FOLDER_LOCK_SECONDS); writes in other folders never wait for it."""
    with _folder_locks_lock:
        lock = _folder_locks.setdefault(os.fspath(folder), threading.Lock())
    deadline = time.monotonic() + (FOLDER_LOCK_SECONDS if timeout is None else timeout)
    # A bounded wait beats the caller's heartbeat (it follows a database call: the lease
    # check of `before_replace`), so it never adds up with that call into a stall.
    while not lock.acquire(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
        liveness.beat()
        if time.monotonic() >= deadline:
            raise TimeoutError(errno.ETIMEDOUT, "a guarded write waits too long", str(folder))
    try:
        yield
    finally:
        lock.release()


def write_atomic(
    path: Path,
    data: bytes,
    before_replace: Callable[[], None] | None = None,
    mode: int = DEFAULT_FILE_MODE,
    keep: Callable[[Path], bool] | None = None,
) -> bool:
    """Write `data` to `path`: temp file in the same folder, fsync, rename, fsync the folder.

    The file gets exactly `mode`, and folders created for it `folder_mode(mode)`, whatever
    the umask. `before_replace` runs after the data is durable and just before the rename;
    if it raises, nothing is published. On any error (disk full, permissions) the temp
    file is removed and `path` is untouched; a name the file system refuses (too long)
    is an InputError.

    With `keep` (a guarded write), the check and the rename happen under `folder_lock`:
    if `keep(path)` says the file there now must stay, nothing is written and the result
    is False. Every writer of a file that must never go back (e.g. a final batch status)
    passes `keep`, so no other guarded write can land between its check and its rename.
    """
    with name_errors_are_input_errors(path.parent):
        make_folder(path.parent, folder_mode(mode))
    tmp = path.parent / temp_name(path.name)
    with _writing_lock:
        _writing.add(tmp.name)
    try:
        with name_errors_are_input_errors(path):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), mode)  # open's mode is masked by the umask
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if before_replace is not None:
                before_replace()
            if keep is None:
                os.replace(tmp, path)
            else:
                with folder_lock(path.parent):
                    if keep(path):
                        with contextlib.suppress(OSError):  # else a stale temp, swept later
                            tmp.unlink()
                        return False
                    os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        with _writing_lock:
            _writing.discard(tmp.name)
    fsync_dir(path.parent)
    return True


def is_stale_temp(name: str, mtime: float, now: float, max_age: float) -> bool:
    """Is `name` a temp file of write_atomic that nobody has written for `max_age` seconds?"""
    return _TEMP_NAME.fullmatch(name) is not None and now - mtime > max_age


def remove_stale_temps(folder: Path, max_age: float, now: float) -> list[Path]:
    """Delete write_atomic temp files in `folder` older than `max_age` (left by a killed
    process); returns what was removed. A temp file this process is still writing is
    never stale, however long its writer waits (e.g. for the database, through an
    outage, to confirm its lease before the rename)."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if _remove_if_stale(entry, max_age, now):
            removed.append(Path(entry.path))
    return removed


def remove_stale_temps_below(
    tops: list[Path], max_age: float, now: float, max_entries: int, max_seconds: float
) -> tuple[list[Path], bool]:
    """`remove_stale_temps` in `tops` and every folder below them, breadth first (all the
    tops before anything deeper), one listing per folder, never through a symbolic link,
    within `max_entries` entries and `max_seconds`. Returns what was removed and whether
    the walk was cut short."""
    removed: list[Path] = []
    waiting = deque(tops)
    seen = 0
    started = time.monotonic()
    while waiting:
        folder = waiting.popleft()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            seen += 1
            if seen > max_entries or time.monotonic() - started > max_seconds:
                return removed, True
            if entry.is_dir(follow_symlinks=False):
                waiting.append(Path(entry.path))
            elif _remove_if_stale(entry, max_age, now):
                removed.append(Path(entry.path))
    return removed, False


def _remove_if_stale(entry: os.DirEntry[str], max_age: float, now: float) -> bool:
    if _TEMP_NAME.fullmatch(entry.name) is None:  # cheap: a folder may hold many files
        return False
    with _writing_lock:
        if entry.name in _writing:
            return False
    try:
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not (
        entry.is_file(follow_symlinks=False)
        and is_stale_temp(entry.name, info.st_mtime, now, max_age)
    ):
        return False
    try:
        os.unlink(entry.path)
    except FileNotFoundError:
        return False
    return True


def move_durably(source: Path, target: Path, mode: int = DEFAULT_FILE_MODE) -> None:
    """Rename `source` to `target` (same file system) and make both folders durable.

    A missing target folder is created with `folder_mode(mode)`; the file keeps its mode.
    """
    make_folder(target.parent, folder_mode(mode))
    with name_errors_are_input_errors(target):
        os.replace(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _renameat2() -> Callable[..., int] | None:
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # libc without it (glibc < 2.28, musl < 1.2.5)
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    function.argtypes += [ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target`, or FileExistsError if `target` exists: atomically with
    renameat2(RENAME_NOREPLACE). It needs no permission on the file itself, unlike a
    hard link (refused with fs.protected_hardlinks for another user's file). Where the
    kernel or the file system lacks it, a check and then a rename."""
    if _RENAMEAT2 is not None:
        import ctypes

        code = _RENAMEAT2(
            _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
        )
        if code == 0:
            return
        error = ctypes.get_errno()
        if error not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(error, os.strerror(error), str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)
