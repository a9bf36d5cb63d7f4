"""Reading an input file into text, with a specific, actionable error for each bad kind."""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path


class InputError(Exception):
    """The input cannot be processed as it is; retrying will not help."""


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM) or UTF-16 with a BOM; anything else names the bad byte."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
        encoding = "utf-8"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8"
        if b"\x00" in data:
            offset = data.index(b"\x00")
            raise InputError(
                f"binary content: NUL byte at offset {offset} (expected UTF-8 or UTF-16 text)"
            )
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not valid {encoding.upper()} text: bad byte 0x{data[exc.start]:02x} "
            f"at offset {exc.start}"
        ) from None
    if "\x00" in text:
        raise InputError("binary content: the text contains NUL characters")
    if not text.strip():
        raise InputError("empty input: the file has no text" if not text else
                         "empty input: the file holds only whitespace")  # fmt: skip
    return text


def read_input_file(path: Path, max_bytes: int) -> tuple[str, bytes]:
    """Read a regular file (never following a symlink) and decode it; returns (text, bytes)."""
    data = read_input_bytes(path, max_bytes)
    return decode_text(data), data


def read_input_bytes(path: Path, max_bytes: int) -> bytes:
    """Read a regular file (never following a symlink), at most `max_bytes` of it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InputError(f"cannot open input: {exc.strerror}") from None
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
