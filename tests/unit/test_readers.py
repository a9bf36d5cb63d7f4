"""Input readers: every format, made by the test, including a PDF and a CSV."""

from __future__ import annotations

import codecs
import csv
import io
import json

import pytest

from tests.files import make_pdf
from worker.errors import InputError
from worker.io.readers import Document, Record, Records, read_input, reader_for, template_variables
from worker.io.readers.base import ReadLimits


@pytest.mark.parametrize(
    ("name", "reader"),
    [
        ("a.txt", "text"),
        ("a.MD", "text"),
        ("page.html", "html"),
        ("page.htm", "html"),
        ("doc.pdf", "pdf"),
        ("x.json", "json"),
        ("x.jsonl", "jsonl"),
        ("rows.csv", "csv"),
        ("unknown.log", "text"),
        ("noext", "text"),
    ],
)
def test_reader_is_chosen_by_extension(name: str, reader: str) -> None:
    assert reader_for(name) == reader


def test_a_pipeline_can_force_a_reader() -> None:
    assert reader_for("requests.jsonl", "openai-batch") == "openai-batch"


@pytest.mark.parametrize(
    "data",
    [
        "Grüße aus Köln".encode(),
        codecs.BOM_UTF8 + "Grüße aus Köln".encode(),
        "Grüße aus Köln".encode("utf-16"),  # with BOM
    ],
)
def test_text_and_markdown_in_utf8_and_utf16(data: bytes) -> None:
    assert read_input(data, "text") == Document("Grüße aus Köln")


def test_invalid_encoding_names_the_offset_of_the_first_bad_byte() -> None:
    # "café " in UTF-8 is 6 bytes; then a Latin-1 é
    for reader in ("text", "html", "csv", "jsonl", "json"):
        with pytest.raises(InputError, match=r"not valid UTF-8 text: bad byte 0xe9 at offset 6"):
            read_input(b"caf\xc3\xa9 \xe9t\xe9", reader)


def test_html_gives_visible_text_only() -> None:
    page = b"""<!doctype html><html><head><title>Quarterly report</title>
    <style>p { color: red }</style><script>var secret = "do not read";</script></head>
    <body><h1>Results&nbsp;&amp; outlook</h1><p>Revenue rose   by <b>12%</b>.</p>
    <noscript>enable js</noscript><ul><li>One</li><li>Two</li></ul><!-- a comment -->
    <script type="application/ld+json">{"x": 1}</script><p>End.</p></body></html>"""
    text = read_input(page, "html")
    assert isinstance(text, Document)
    assert text.text.splitlines() == [
        "Quarterly report",
        "",
        "Results & outlook",
        "",
        "Revenue rose by 12%.",
        "",
        "One",
        "",
        "Two",
        "",
        "End.",
    ]
    for hidden in ("color", "secret", "enable js", "comment", '"x"'):
        assert hidden not in text.text


def test_html_without_visible_text_fails() -> None:
    with pytest.raises(InputError, match="no visible text"):
        read_input(b"<html><script>x()</script></html>", "html")


def test_pdf_text_from_every_page() -> None:
    data = make_pdf(["Invoice 42 (draft)\nTotal: 1,250 EUR", "Page two: thank you."])
    result = read_input(data, "pdf")
    assert result == Document("Invoice 42 (draft)\nTotal: 1,250 EUR\n\nPage two: thank you.")


def test_bad_and_empty_pdfs_fail_clearly() -> None:
    with pytest.raises(InputError, match="not a PDF file"):
        read_input(b"hello", "pdf")
    with pytest.raises(InputError, match="cannot read the PDF"):
        read_input(b"%PDF-1.7\n garbage without objects", "pdf")
    with pytest.raises(InputError, match="no text layer"):
        read_input(make_pdf([""]), "pdf")


def test_csv_one_record_per_row_with_the_header_as_fields() -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "text", "lang"])
    writer.writerow(["1", "Hello, world", "en"])
    writer.writerow(["2", "Line one\nline two", "en"])  # a quoted newline
    writer.writerow([])
    writer.writerow(["3", "too", "many", "fields"])
    writer.writerow(["4", "Hallo", "de"])
    records = read_input(buffer.getvalue().encode("utf-8-sig"), "csv")
    assert isinstance(records, Records)
    assert records.records == [
        Record(2, {"id": "1", "text": "Hello, world", "lang": "en"}),
        Record(3, {"id": "2", "text": "Line one\nline two", "lang": "en"}),
        Record(6, None, "line 6 has 4 fields; the header has 3"),
        Record(7, {"id": "4", "text": "Hallo", "lang": "de"}),
    ]


def test_csv_without_rows_fails() -> None:
    with pytest.raises(InputError, match="no records"):
        read_input(b"id,text\n", "csv")


def test_jsonl_one_record_per_line_and_bad_lines_are_records_with_errors() -> None:
    data = b'{"text": "a"}\n\n"just a string"\n{broken\n{"n": 3}\n'
    records = read_input(data, "jsonl")
    assert isinstance(records, Records)
    assert records.records[0] == Record(1, {"text": "a"})
    assert records.records[1] == Record(3, {"input": "just a string"})
    assert records.records[2].line == 4 and records.records[2].fields is None
    assert str(records.records[2].error).startswith("line 4 is not valid JSON")
    assert records.records[3] == Record(5, {"n": 3})


def test_json_array_is_records_and_object_is_one_document_with_variables() -> None:
    array = read_input(json.dumps([{"text": "a"}, "b"]).encode(), "json")
    assert array == Records([Record(1, {"text": "a"}), Record(2, {"input": "b"})])
    single = read_input(json.dumps({"title": "T", "text": "Body"}).encode(), "json")
    assert isinstance(single, Document)
    assert single.text == "Body"
    assert single.variables["title"] == "T"
    with pytest.raises(InputError, match="not valid JSON: .* at line 1 column 2"):
        read_input(b"{x", "json")


def test_template_variables_from_record_fields() -> None:
    text, variables = template_variables({"subject": "Hi", "body": "Text", "bad key": 1})
    assert text == "subject: Hi\nbody: Text\nbad key: 1"
    assert variables["subject"] == "Hi"
    assert "bad key" not in variables
    assert variables["record"]["bad key"] == 1
    assert template_variables({"text": "T", "n": 2})[0] == "T"


def test_html_with_an_unclosed_head_still_shows_the_body() -> None:
    page = b"<html><head><title>T</title><meta charset=utf-8><body><p>Visible.</p></body>"
    result = read_input(page, "html")
    assert isinstance(result, Document) and result.text.splitlines() == ["T", "", "Visible."]


def test_a_csv_field_over_the_csv_modules_limit_fails_the_file_with_that_reason() -> None:
    """One quoted field of a million characters is one record, not half a million: the
    file fails naming the field, instead of every line of it read as a record."""
    data = b'h\n"' + b"a\n" * 500_000 + b'"\n'
    with pytest.raises(InputError, match=r"line 2: a CSV field is longer than \d+ characters"):
        read_input(data, "csv", ReadLimits(10**7, 10_000))
