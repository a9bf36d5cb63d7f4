"""Plain text and markdown."""

from __future__ import annotations

from worker.io.decode import decode_text
from worker.io.readers.base import Document


def read_text(data: bytes) -> Document:
    """UTF-8 (BOM or not) or UTF-16 with BOM; InputError names the first bad byte."""
    return Document(decode_text(data))
