"""Decoding inputs: each kind of bad input gets its own readable error."""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import pytest

from worker.errors import InputError
from worker.io.decode import decode_text
from worker.io.safe_read import read_regular_file


def test_utf8_with_and_without_bom_and_utf16_with_bom() -> None:
    assert decode_text("héllo".encode()) == "héllo"
    assert decode_text(codecs.BOM_UTF8 + "héllo".encode()) == "héllo"
    assert decode_text("héllo".encode("utf-16")) == "héllo"  # BOM included


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty input: the file has no text"),
        (b" \n\t ", "empty input: the file holds only whitespace"),
        (b"\x00\x01\x02", "binary content: NUL byte at offset 0"),
        (b"abc\xffdef", "not valid UTF-8 text: bad byte 0xff at offset 3"),
    ],
)
def test_bad_inputs_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_text(data)


def test_oversize_file_is_refused_with_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"a" * 101)
    with pytest.raises(InputError, match="input is 101 bytes; max_input_bytes allows 100"):
        read_regular_file(path, max_bytes=100)


def test_symlink_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "secret.txt"
    target.write_text("secret")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with pytest.raises(InputError, match="cannot open input"):
        read_regular_file(link, max_bytes=100)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_regular_file(fifo, max_bytes=100)
