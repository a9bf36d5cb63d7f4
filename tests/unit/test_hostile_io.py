"""Hostile and unlucky input, the file side, as pure pieces: names within 255 bytes,
output modes, name errors, nesting depth, strict CSV, bounded text and record counts."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.files import make_expanding_pdf, make_pdf
from worker.batch.files import batch_files
from worker.batch.lines import read_batch
from worker.config import Settings
from worker.errors import InputError
from worker.io import jsontext
from worker.io.atomic import folder_mode, move_durably, write_atomic
from worker.io.naming import NAME_MAX_BYTES, archive_name, error_name, fit_name, output_name
from worker.io.readers import Document, ReadLimits, Record, Records, read_input

# Names --------------------------------------------------------------------------------


def byte_len(name: str) -> int:
    return len(name.encode())


@pytest.mark.parametrize(
    "name",
    [
        "a" * 255,
        "é" * 127 + "x",  # 255 bytes
        "a." + "x" * 253,  # the whole name is its "suffix"
        "report." + "東" * 82,  # a long multi-byte suffix
        "x" * 200 + ".tar.gz",
    ],
)
def test_every_generated_name_fits_255_bytes_and_is_valid_utf8(name: str) -> None:
    generated = [
        output_name(name, "markdown"),
        error_name(name),
        archive_name(name, 123456789, taken=True),
        error_name(archive_name(name, 123456789, taken=True)),
    ]
    for result in generated:
        assert byte_len(result) <= NAME_MAX_BYTES, result
        result.encode().decode("utf-8")


def test_a_long_archive_name_keeps_jobs_apart() -> None:
    name = "a." + "x" * 253
    assert archive_name(name, 1, taken=True) != archive_name(name, 2, taken=True)


def test_fit_name_leaves_short_names_alone_and_marks_cut_ones() -> None:
    assert fit_name("report.txt", ".md") == "report.txt.md"
    cut = fit_name("r" * 300, ".md")
    assert byte_len(cut) == NAME_MAX_BYTES and cut.endswith(".md") and "~" in cut


def settings_on(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


def test_batch_result_files_keep_the_whole_input_name_and_the_batch_id(tmp_path: Path) -> None:
    settings = settings_on(tmp_path)
    json_files = batch_files(settings, "batch", "c.json", "batch_1")
    jsonl_files = batch_files(settings, "batch", "c.jsonl", "batch_2")
    again = batch_files(settings, "batch", "c.jsonl", "batch_3")
    assert json_files.output.name == "c.json.batch_1.output.jsonl"
    assert json_files.errors.name == "c.json.batch_1.errors.jsonl"
    assert json_files.batch.name == "c.json.batch_1.batch.json"
    names = {p.name for f in (json_files, jsonl_files, again) for p in vars(f).values()}
    assert len(names) == 9  # no two batches share a file


def test_batch_result_files_of_a_long_name_fit_and_share_one_head(tmp_path: Path) -> None:
    files = batch_files(settings_on(tmp_path), "batch", "q" * 249 + ".jsonl", "batch_77")
    heads = set()
    for path in (files.output, files.errors, files.batch):
        assert byte_len(path.name) <= NAME_MAX_BYTES
        assert ".batch_77." in path.name
        heads.add(path.name.split(".batch_77.")[0])
    assert len(heads) == 1


# Files: modes and name errors ---------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_outputs_are_0640_in_0750_folders_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "outbox" / "p" / "out.txt"
    write_atomic(target, b"x")
    assert mode(target) == 0o640
    assert mode(target.parent) == 0o750 and mode(target.parent.parent) == 0o750
    write_atomic(tmp_path / "shared" / "out.txt", b"x", mode=0o644)
    assert mode(tmp_path / "shared" / "out.txt") == 0o644
    assert mode(tmp_path / "shared") == 0o755
    source = tmp_path / "in.txt"
    source.write_text("x")
    move_durably(source, tmp_path / "done" / "p" / "in.txt")
    assert mode(tmp_path / "done" / "p") == 0o750


def test_folder_mode_adds_search_where_read_is_allowed() -> None:
    assert folder_mode(0o640) == 0o750
    assert folder_mode(0o600) == 0o700
    assert folder_mode(0o644) == 0o755


def test_a_name_the_file_system_refuses_is_an_input_error_not_retried(tmp_path: Path) -> None:
    long = tmp_path / ("n" * 300)
    with pytest.raises(InputError, match="file name too long"):
        write_atomic(long, b"x")
    assert list(tmp_path.iterdir()) == []  # no temp file left
    source = tmp_path / "a.txt"
    source.write_text("x")
    with pytest.raises(InputError, match="file name too long"):
        move_durably(source, tmp_path / ("m" * 300))
    assert source.exists()


def test_other_write_errors_stay_os_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError) as info:
        write_atomic(tmp_path / "x.txt", b"x")
    assert not isinstance(info.value, InputError) and info.value.errno == errno.ENOSPC


# JSON nesting -----------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def test_deep_json_is_an_input_error_never_a_recursion_error() -> None:
    assert jsontext.loads(nested(jsontext.MAX_JSON_DEPTH)) is not None
    for depth in (jsontext.MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(jsontext.JSONTooDeep, match="deeper than 100 levels"):
            jsontext.loads(nested(depth))
    with pytest.raises(json.JSONDecodeError):
        jsontext.loads("{nope")


def test_a_deep_jsonl_line_is_a_failed_record_and_the_others_run() -> None:
    data = f'{{"text": "a"}}\n{nested(100_000)}\n{{"text": "b"}}\n'.encode()
    result = read_input(data, "jsonl")
    assert isinstance(result, Records)
    assert result.records == [
        Record(1, {"text": "a"}),
        Record(2, None, "line 2: JSON nesting is deeper than 100 levels"),
        Record(3, {"text": "b"}),
    ]


def test_deep_json_documents_and_array_elements() -> None:
    with pytest.raises(InputError, match="nesting is deeper"):
        read_input(nested(100_000).encode(), "json")
    with pytest.raises(InputError, match="nesting is deeper"):
        read_input(('{"a": ' + nested(150) + "}").encode(), "json")
    records = read_input(f'["ok", {nested(120)}]'.encode(), "json")
    assert isinstance(records, Records)
    assert records.records[0] == Record(1, {"input": "ok"})
    assert records.records[1].error == "element 2: JSON nesting is deeper than 100 levels"


def test_a_deep_batch_line_is_an_invalid_json_line() -> None:
    good = json.dumps(
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": "Hi"}]},
        }
    )
    lines = read_batch(f"{good}\n{nested(50_000)}\n".encode(), lambda name: name)
    assert lines[0].error is None
    assert lines[1].error is not None and lines[1].error.code == "invalid_json"
    assert "nesting is deeper than 100 levels" in lines[1].error.message


# CSV --------------------------------------------------------------------------------


def test_a_stray_csv_quote_fails_its_row_only() -> None:
    data = b'id,text\n1,fine\n2,"never closed\n3,next\n4,"closed"junk\n5,last\n'
    records = read_input(data, "csv")
    assert isinstance(records, Records)
    assert [(r.line, r.fields) for r in records.records if r.error is None] == [
        (2, {"id": "1", "text": "fine"}),
        (4, {"id": "3", "text": "next"}),
        (6, {"id": "5", "text": "last"}),
    ]
    errors = {r.line: r.error for r in records.records if r.error}
    assert sorted(errors) == [3, 5]
    assert all(e and e.startswith(f"line {n}: not valid CSV") for n, e in errors.items())


def test_quoted_newlines_in_csv_still_work() -> None:
    records = read_input(b'id,text\n1,"two\nlines"\n2,b\n', "csv")
    assert isinstance(records, Records)
    assert records.records == [
        Record(2, {"id": "1", "text": "two\nlines"}),
        Record(4, {"id": "2", "text": "b"}),
    ]


# Bounds -----------------------------------------------------------------------------


def test_a_small_pdf_that_expands_past_the_limit_fails_before_reading_it_all() -> None:
    data = make_expanding_pdf(pages=4, chars_per_page=2_000_000)
    assert len(data) < 20_000
    with pytest.raises(InputError, match="extracted text is over max_input_bytes"):
        read_input(data, "pdf", ReadLimits(max_text_chars=100_000))
    small = make_pdf(["Page one.", "Page two."])
    assert read_input(small, "pdf", ReadLimits(max_text_chars=100)) == Document(
        "Page one.\n\nPage two."
    )


def test_text_of_every_document_reader_is_bounded() -> None:
    html = b"<p>" + b"word " * 100 + b"</p>"
    with pytest.raises(InputError, match="extracted text is over max_input_bytes"):
        read_input(html, "html", ReadLimits(max_text_chars=50))
    with pytest.raises(InputError, match="extracted text is over max_input_bytes"):
        read_input(json.dumps({"text": "x" * 60}).encode(), "json", ReadLimits(50))
    assert read_input(b"short", "text", ReadLimits(max_text_chars=50)) == Document("short")


@pytest.mark.parametrize(
    ("reader", "data"),
    [
        ("jsonl", b"1\n" * 11),
        ("csv", b"n\n" + b"1\n" * 11),
        ("json", json.dumps([1] * 11).encode()),
    ],
)
def test_more_records_than_allowed_fail_the_file(reader: str, data: bytes) -> None:
    with pytest.raises(InputError, match=r"more than 10 records \(max_records_per_file\)"):
        read_input(data, reader, ReadLimits(max_records=10))  # type: ignore[arg-type]
    ten = data.replace(b"1\n", b"", 1) if reader != "json" else json.dumps([1] * 10).encode()
    result = read_input(ten, reader, ReadLimits(max_records=10))  # type: ignore[arg-type]
    assert isinstance(result, Records) and len(result.records) == 10


def test_a_batch_file_over_the_line_limit_fails_as_a_whole() -> None:
    line = b'{"custom_id": "x"}\n'
    assert len(read_batch(line * 3, lambda n: n, max_lines=3)) == 3
    with pytest.raises(InputError, match="more than 3 records"):
        read_batch(line * 4, lambda n: n, max_lines=3)
