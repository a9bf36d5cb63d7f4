"""PDF: the text layer, page by page, through PDFium (pypdfium2).

Bounded by pages, drawing objects and characters, not only by the size of the file:
pages share content streams and streams are compressed, so a few kilobytes of PDF can
hold megabytes of text or millions of operators. Each bound raises as soon as it is
passed, before the rest is read. The cost of parsing the operators of a page (PDFium
parses some ten million a second, in C) is bounded by the sandbox's CPU and memory
limits, which this reader runs under.

Measured (a 105 KB PDF whose one content stream decompresses to 12 million empty text
operators): pypdf took minutes per page and gigabytes of Python objects (400,000
operators: 5.8 s and 153 MB); PDFium 1.1 s and 217 MB for all 12 million.
"""

from __future__ import annotations

from typing import Any

from worker.errors import InputError, InputTooCostly
from worker.io.readers.base import Document, text_over_limit

# A PDF with more pages is refused before any page is read.
MAX_PAGES = 5_000
# Drawing objects (text runs, paths, images) of all pages together: each costs PDFium
# memory, and pages that share one content stream each count it again.
MAX_OBJECTS = 1_000_000


def read_pdf(data: bytes, max_chars: int | None = None) -> Document:
    """The text of every page, pages separated by a blank line.

    InputError if it is not a readable PDF, is encrypted, has no text, or has more than
    `max_chars` characters; InputTooCostly past MAX_PAGES pages or MAX_OBJECTS objects.
    """
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise InputError("not a PDF file: it does not start with %PDF-")
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == raw.FPDF_ERR_PASSWORD:
            raise InputError("the PDF is encrypted; decrypt it first") from None
        raise InputError(f"cannot read the PDF: {exc}") from None
    try:
        pages = _pages(document, raw, max_chars)
    except pdfium.PdfiumError as exc:
        raise InputError(f"cannot read the PDF: {exc}") from None
    finally:
        document.close()
    text = "\n\n".join(page for page in pages if page)
    if not text:
        raise InputError(
            f"empty input: the PDF's {len(pages)} page(s) have no text layer (scanned? OCR it)"
        )
    return Document(text)


def _pages(document: Any, raw: Any, max_chars: int | None) -> list[str]:
    count = len(document)
    if count > MAX_PAGES:
        raise InputTooCostly(f"the PDF has {count} pages; the limit is {MAX_PAGES}")
    pages: list[str] = []
    objects = characters = 0
    for index in range(count):
        page = document[index]
        try:
            objects += raw.FPDFPage_CountObjects(page.raw)
            if objects > MAX_OBJECTS:
                raise InputTooCostly(
                    f"over the {MAX_OBJECTS} drawing objects limit at page {index + 1} "
                    "while reading PDF"
                )
            textpage = page.get_textpage()
            try:
                characters += textpage.count_chars()
                if max_chars is not None and characters > max_chars:
                    raise text_over_limit(max_chars)
                text = textpage.get_text_range()
            finally:
                textpage.close()
        finally:
            page.close()
        pages.append(text.replace("\r\n", "\n").replace("\r", "\n").strip())
    return pages
