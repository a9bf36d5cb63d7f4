"""Ignore rules and output/archive naming."""

from __future__ import annotations

import pytest

from worker.io.naming import archive_name, error_name, is_ignored_name, output_name


@pytest.mark.parametrize(
    "name", [".hidden", "report.txt.part", "x.tmp", "a.crdownload", "draft.txt~", ".~lock"]
)
def test_partial_and_hidden_files_are_ignored(name: str) -> None:
    assert is_ignored_name(name)


@pytest.mark.parametrize("name", ["report.txt", "notes.md", "a b c.txt", "résumé.txt"])
def test_ordinary_names_are_taken(name: str) -> None:
    assert not is_ignored_name(name)


def test_output_name_keeps_the_input_name_and_adds_the_format_extension() -> None:
    assert output_name("report.txt", "markdown") == "report.txt.md"
    assert output_name("report.md", "markdown") == "report.md.md"
    assert output_name("data.csv", "json") == "data.csv.json"


def test_long_names_are_shortened_to_fit_255_bytes_and_stay_unique() -> None:
    a = "é" * 124 + "a.txt"  # 253 bytes
    b = "é" * 124 + "b.txt"
    out_a, out_b = output_name(a, "markdown"), output_name(b, "markdown")
    assert len(out_a.encode()) <= 255 and out_a.endswith(".md")
    assert out_a != out_b
    out_a.encode().decode("utf-8")  # still valid UTF-8
    assert len(error_name(a).encode()) <= 255


def test_archive_name_adds_the_job_id_only_on_collision() -> None:
    assert archive_name("report.txt", 7, taken=False) == "report.txt"
    assert archive_name("report.txt", 7, taken=True) == "report.job7.txt"
