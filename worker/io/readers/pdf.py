"""PDF: the text layer, page by page, through pypdf."""

from __future__ import annotations

import io
import logging

from worker.errors import InputError
from worker.io.readers.base import Document


def read_pdf(data: bytes) -> Document:
    """The text of every page, pages separated by a blank line."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise InputError("not a PDF file: it does not start with %PDF-")
    # pypdf logs warnings about harmless defects (bad xref offsets) at WARNING level.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InputError("the PDF is encrypted; decrypt it first")
        pages = [page.extract_text() or "" for page in reader.pages]
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
