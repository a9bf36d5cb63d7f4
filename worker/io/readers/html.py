"""HTML: the visible text only (no scripts, styles or markup), with block breaks kept."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from worker.errors import InputError
from worker.io.decode import decode_text
from worker.io.readers.base import Document

# Content of these elements is never shown to a reader of the page.
HIDDEN = frozenset({"script", "style", "noscript", "template", "head", "svg", "iframe", "object"})
# Kept inside <head>: the title is visible in the browser.
SHOWN_IN_HEAD = frozenset({"title"})
BLOCKS = frozenset(
    {
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "tr",
        "table",
        "section",
        "article",
        "header",
        "footer",
        "main",
        "nav",
        "aside",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "pre",
        "blockquote",
        "title",
        "hr",
        "dd",
        "dt",
        "figcaption",
        "form",
        "fieldset",
    }
)
VOID = frozenset({"br", "hr", "img", "meta", "link", "input", "wbr", "area", "base", "col"})


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden: list[str] = []  # open hidden elements

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body" and "head" in self.hidden:  # a <head> left open ends at <body>
            del self.hidden[self.hidden.index("head") :]
        if tag in HIDDEN and tag not in VOID:
            self.hidden.append(tag)
        elif tag in SHOWN_IN_HEAD and self.hidden == ["head"]:
            self.hidden.append(tag + ":shown")
        if tag in BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.hidden) - 1, -1, -1):
            if self.hidden[depth] in (tag, tag + ":shown"):
                del self.hidden[depth:]
                break
        if tag in BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden or self.hidden[-1].endswith(":shown"):
            self.parts.append(data)


def visible_text(markup: str) -> str:
    """The text a browser would show, one block per paragraph."""
    parser = _VisibleText()
    parser.feed(markup)
    parser.close()
    lines = (
        re.sub(r"[ \t\r\f\v\u00a0]+", " ", line).strip()
        for line in "".join(parser.parts).split("\n")
    )
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def read_html(data: bytes) -> Document:
    """Visible text of an HTML page; InputError if it has none."""
    text = visible_text(decode_text(data))
    if not text:
        raise InputError("empty input: the HTML page has no visible text")
    return Document(text)
