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
from worker.io.atomic import remove_stale_temps_below
from worker.queue.snapshot_reads import JobRow
from worker.run.kinds.sweep import check_output_place
from worker.sources.sweep import output_subfolder, swept_root


def below(path: Path, globs: list[str], data_dir: Path) -> Path:
    """Where the daemon puts `path`'s output: below the root of the glob it matches."""
    root = swept_root(str(path), globs, data_dir)
    assert root is not None
    return output_subfolder(path, root)


def test_a_flat_glob_keeps_outputs_flat(tmp_path: Path) -> None:
    share = tmp_path / "share"
    assert below(share / "a.md", [f"{share}/*.md"], tmp_path) == Path()


def test_a_recursive_glob_mirrors_the_folders_below_its_root(tmp_path: Path) -> None:
    globs = ["reports/**/*.txt"]  # relative: under the data folder
    november = tmp_path / "reports" / "2026-11" / "summary.txt"
    december = tmp_path / "reports" / "2026-12" / "summary.txt"
    assert below(november, globs, tmp_path) == Path("2026-11")
    assert below(december, globs, tmp_path) == Path("2026-12")


def test_only_the_glob_a_file_matches_places_its_output(tmp_path: Path) -> None:
    november = tmp_path / "reports" / "2026-11" / "summary.txt"
    alone = below(november, ["reports/**/*.txt"], tmp_path)
    # Another glob added to the pipeline (before or after) moves no output.
    for globs in (["reports/**/*.txt", "/srv/share/*.md"], ["/srv/share/*.md", "reports/**/*.txt"]):
        assert below(november, globs, tmp_path) == alone == Path("2026-11")


def test_no_output_is_written_through_a_link_or_over_a_folder(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox" / "p"
    (outbox / "real").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (outbox / "linked").symlink_to(elsewhere)
    check_output_place(outbox, outbox / "real" / "new" / "x.txt.txt")  # real or not yet made
    with pytest.raises(InputError, match="symbolic link"):
        check_output_place(outbox, outbox / "linked" / "deeper" / "x.txt.txt")
    # A swept tree with a folder `x.txt.txt/` beside `x.txt`: their outputs' places clash.
    (outbox / "real" / "x.txt.txt").mkdir()
    with pytest.raises(InputError, match="taken by a folder"):
        check_output_place(outbox, outbox / "real" / "x.txt.txt")
    (outbox / "real" / "file").write_text("an output")
    with pytest.raises(InputError, match="is a file"):
        check_output_place(outbox, outbox / "real" / "file" / "y.txt.txt")


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
    (outbox / "1000").symlink_to(tmp_path)  # named like a submitter's folder
    assert output_path(tmp_path, job(outbox / "1000" / "jobs.db")) is None


def test_the_temp_sweep_reaches_nested_folders_but_no_link(tmp_path: Path) -> None:
    top, other = tmp_path / "outbox" / "p", tmp_path / "outbox" / "q"
    (top / "1000" / "2026-11").mkdir(parents=True)
    other.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, top / "linked")
    temps = [
        top / ".a.0a1b2c3d.tmp",
        top / "1000" / "2026-11" / ".b.0a1b2c3d.tmp",
        other / ".c.0a1b2c3d.tmp",
        elsewhere / ".d.0a1b2c3d.tmp",  # behind a link: never reached
    ]
    for path in temps:
        path.write_text("x")
        os.utime(path, (1000, 1000))
    removed, cut_short = remove_stale_temps_below([top, other], 60, 10_000, 1000, 60)
    assert set(removed) == set(temps[:3]) and not cut_short
    assert temps[3].exists()
    # Bounded, breadth first: every top folder is swept before anything deeper.
    for path in temps[:3]:
        path.write_text("x")
        os.utime(path, (1000, 1000))
    removed, cut_short = remove_stale_temps_below([top, other], 60, 10_000, 5, 60)
    assert cut_short and set(removed) == {temps[0], temps[2]}
