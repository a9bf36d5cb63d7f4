"""Messages between the daemon and a sandbox child: an 8-byte length, then a pickle.

The child reads and writes blocking file descriptors. The parent never blocks: it
reads and writes non-blocking descriptors through `Channel`, whose every wait has a
timeout, so a stuck or dead child can only cost the caller its deadline.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import struct
from typing import Any

HEADER = struct.Struct("!Q")
# A reply larger than this is a broken child (records of a max_input_bytes file are a
# few megabytes when pickled).
MAX_MESSAGE = 1 << 30


class ChannelClosed(Exception):
    """The other end closed its pipe (the child exited or died)."""


def encode(value: Any) -> bytes:
    """One framed message."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def read_blocking(fd: int) -> Any:
    """The next message on a blocking descriptor (the child's side); ChannelClosed at EOF."""
    (size,) = HEADER.unpack(_read_exactly(fd, HEADER.size))
    if size > MAX_MESSAGE:
        raise ChannelClosed(f"message of {size} bytes")
    return pickle.loads(_read_exactly(fd, size))  # noqa: S301 - our own daemon's messages


def write_blocking(fd: int, value: Any) -> None:
    """Write one message on a blocking descriptor (the child's side)."""
    view = memoryview(encode(value))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly(fd: int, size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed("end of file")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class Channel:
    """The parent's end: a non-blocking request pipe and a non-blocking reply pipe."""

    def __init__(self, request_fd: int, reply_fd: int) -> None:
        os.set_blocking(request_fd, False)
        os.set_blocking(reply_fd, False)
        self.request_fd = request_fd
        self.reply_fd = reply_fd
        self._pending = memoryview(b"")
        self._buffer = bytearray()

    def start_send(self, value: Any) -> None:
        """Queue one message; `pump` writes it as the child reads."""
        self._pending = memoryview(encode(value))

    @property
    def sending(self) -> bool:
        """Part of the last message is not written yet."""
        return bool(self._pending)

    def pump(self, timeout: float) -> Any | None:
        """Wait up to `timeout` seconds: write what is pending, read what came. The reply,
        once complete; else None. ChannelClosed if the child closed its end."""
        buffered = self._take()  # `ready` and a reply can come in one read
        if buffered is not None:
            return buffered
        writers = [self.request_fd] if self._pending else []
        readable, writable, _ = select.select([self.reply_fd], writers, [], max(timeout, 0))
        if writable:
            try:
                written = os.write(self.request_fd, self._pending)
            except BlockingIOError:
                written = 0
            except BrokenPipeError:
                raise ChannelClosed("the child closed its request pipe") from None
            self._pending = self._pending[written:]
        if readable:
            try:
                chunk = os.read(self.reply_fd, 1 << 20)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                raise ChannelClosed("the child closed its reply pipe")
            if chunk:
                self._buffer += chunk
        return self._take()

    def _take(self) -> Any | None:
        if len(self._buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buffer)
        if size > MAX_MESSAGE:
            raise ChannelClosed(f"reply of {size} bytes")
        end = HEADER.size + size
        if len(self._buffer) < end:
            return None
        data = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        return pickle.loads(data)  # noqa: S301 - our own child's reply

    def close(self) -> None:
        """Close both descriptors (the child sees end of file and exits)."""
        for fd in (self.request_fd, self.reply_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
