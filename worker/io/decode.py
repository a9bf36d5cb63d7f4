"""Decoding input bytes into text, with a specific, actionable error for each bad kind."""

from __future__ import annotations

import codecs

from worker.errors import InputError


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
        raise InputError(
            "empty input: the file has no text"
            if not text
            else "empty input: the file holds only whitespace"
        )
    return text
