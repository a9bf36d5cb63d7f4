"""Swept files of one name in different folders never share an output: outputs mirror
where a file lies below the pipeline's globs. The console shows such outputs, the temp
sweep reaches their folders, and no output is written or shown through a link."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from worker.console.files import output_path
from worker.errors import InputError
from worker.queue.snapshot_reads import JobRow
from worker.run.kinds.sweep import check_no_links
from worker.run.recovery import _folders_below
from worker.sources.sweep import output_subfolder


def test_a_flat_glob_keeps_outputs_flat(tmp_path: Path) -> None:
    share = tmp_path / "share"
    assert output_subfolder(share / "a.md", [f"{share}/*.md"], tmp_path) == Path()


def test_a_recursive_glob_mirrors_the_folders_below_its_root(tmp_path: Path) -> None:
    globs = ["reports/**/*.txt"]  # relative: under the data folder
    november = tmp_path / "reports" / "2026-11" / "summary.txt"
    december = tmp_path / "reports" / "2026-12" / "summary.txt"
    assert output_subfolder(november, globs, tmp_path) == Path("2026-11")
    assert output_subfolder(december, globs, tmp_path) == Path("2026-12")


def test_several_globs_mirror_below_their_common_root(tmp_path: Path) -> None:
    globs = [f"{tmp_path}/a/*.md", f"{tmp_path}/b/*.md"]
    assert output_subfolder(tmp_path / "a" / "x.md", globs, tmp_path) == Path("a")
    assert output_subfolder(tmp_path / "b" / "x.md", globs, tmp_path) == Path("b")


def test_no_output_is_written_through_a_link(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox" / "p"
    (outbox / "real").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (outbox / "linked").symlink_to(elsewhere)
    check_no_links(outbox, outbox / "real" / "new")  # real or not yet made: fine
    with pytest.raises(InputError, match="symbolic link"):
        check_no_links(outbox, outbox / "linked" / "deeper")


def job(path: Path) -> JobRow:
    return cast(JobRow, SimpleNamespace(output_path=str(path), pipeline="p"))


def test_the_console_shows_outputs_below_the_pipelines_outbox_only(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox" / "p"
    nested = outbox / "2026-11" / "summary.txt.md"
    nested.parent.mkdir(parents=True)
    assert output_path(tmp_path, job(nested)) == nested
    assert output_path(tmp_path, job(outbox / "flat.md")) == outbox / "flat.md"
    assert output_path(tmp_path, job(tmp_path / "outbox" / "q" / "x.md")) is None
    assert output_path(tmp_path, job(outbox / ".." / ".." / "jobs.db")) is None
    (outbox / "linked").symlink_to(tmp_path)
    assert output_path(tmp_path, job(outbox / "linked" / "jobs.db")) is None


def test_the_temp_sweep_reaches_nested_folders_but_no_link(tmp_path: Path) -> None:
    top = tmp_path / "outbox" / "p"
    (top / "1000" / "2026-11").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "deep").mkdir(parents=True)
    os.symlink(elsewhere, top / "linked")
    found = set(_folders_below([top], 100))
    assert found == {top, top / "1000", top / "1000" / "2026-11"}
    assert len(_folders_below([top], 2)) == 2  # bounded
