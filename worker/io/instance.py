"""This data folder's instance id: a stable name for "the daemon(s) of this folder".

File and sweep jobs are tagged with it when they are queued, and only a daemon of the
same instance claims them (the file is in its folder, not in another machine's). It is
made once, in `<data_dir>/instance-id`, and never changes: a daemon restarted on the
same folder is the same instance, so the jobs it left are still its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from functools import lru_cache
from pathlib import Path

FILE_NAME = "instance-id"
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class InstanceIdError(Exception):
    """The instance-id file holds something that is not an instance id."""


def new_instance_id() -> str:
    """`<host>-<12 hex>`: readable in `status`, unique across hosts and folders."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40].strip(".-") or "host"
    return f"{host}-{secrets.token_hex(6)}"


def _read(path: Path) -> str:
    value = path.read_text(encoding="utf-8", errors="replace").strip()
    if not _VALID.match(value):
        raise InstanceIdError(
            f"{path} holds {value[:80]!r}, not an instance id (letters, digits, . _ -; at "
            "most 64): remove the file and a new id is made (jobs queued under the old one "
            "then wait for a daemon of it)"
        )
    return value


@lru_cache(maxsize=8)
def _cached(data_dir: str) -> str:
    path = Path(data_dir) / FILE_NAME
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        tmp.write_text(new_instance_id() + "\n", encoding="utf-8")
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.link(tmp, path)  # never replaces an existing id
    finally:
        tmp.unlink(missing_ok=True)
    return _read(path)


def instance_id(data_dir: Path) -> str:
    """The instance id of `data_dir`, made on first use (safe against a race between a
    daemon and the CLI). Raises InstanceIdError if the file is damaged."""
    return _cached(str(data_dir.resolve()))
