"""PDF: the text layer, page by page, through pypdf."""

from __future__ import annotations

import io
import logging
from typing import Any

from worker.errors import InputError
from worker.io.readers.base import Document, text_over_limit


class _TooMuchText(Exception):
    pass


def read_pdf(data: bytes, max_chars: int | None = None) -> Document:
    """The text of every page, pages separated by a blank line.

    Pages share content streams and streams are compressed, so a few kilobytes of PDF can
    hold megabytes of text: extraction stops (InputError) once more than `max_chars`
    characters came out, before the rest is read.
    """
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    extracted = 0

    def count(text: str, *_context: Any) -> None:
        # pypdf calls this for each piece of text it shows, so a page's text is bounded
        # while it is extracted, not only after.
        nonlocal extracted
        extracted += len(text)
        if max_chars is not None and extracted > max_chars:
            raise _TooMuchText

    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise InputError("not a PDF file: it does not start with %PDF-")
    # pypdf logs warnings about harmless defects (bad xref offsets) at WARNING level.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InputError("the PDF is encrypted; decrypt it first")
        pages = [page.extract_text(visitor_text=count) or "" for page in reader.pages]
    except _TooMuchText:
        assert max_chars is not None
        raise text_over_limit(max_chars) from None
    except InputError:
        raise
    except PyPdfError as exc:
        raise InputError(f"cannot read the PDF: {exc}") from None
    except Exception as exc:  # a malformed file can break pypdf in many ways; all are bad input
        raise InputError(f"cannot read the PDF: {type(exc).__name__}: {exc}") from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise InputError(
            f"empty input: the PDF's {len(pages)} page(s) have no text layer (scanned? OCR it)"
        )
    return Document(text)
