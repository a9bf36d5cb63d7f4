"""Archiving a finished job's original never takes a newer version of the file: one
written into the inbox between the version check and the move goes back to the inbox
(to run as its own job), whether it replaced the old file or rewrote it in place."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.config import Settings
from worker.io import atomic, files
from worker.io.atomic import move_durably, rename_noreplace
from worker.io.files import FileRef, FileVersion, archive_original

OLD = b"the version that ran\n"
NEW = b"a newer version, dropped while the old one finished\n"


def version_of(path: Path) -> FileVersion:
    info = path.stat()
    return FileVersion(
        info.st_size, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()
    )


@pytest.fixture
def original(settings: Settings) -> Path:
    """`inbox/p/report.txt`, the version that ran."""
    inbox = settings.folder("inbox", "p")
    inbox.mkdir(parents=True)
    path = inbox / "report.txt"
    path.write_bytes(OLD)
    return path


def replace_atomically(path: Path) -> None:
    temp = path.with_name(".incoming")
    temp.write_bytes(NEW)
    os.replace(temp, path)


def replace_with_a_link(path: Path) -> None:
    target = path.parent.parent / "elsewhere.txt"
    target.write_bytes(NEW)
    link = path.with_name(".link")
    link.symlink_to(target)
    os.replace(link, path)


def rewrite_in_place(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.write(NEW)


def racing_move(
    monkeypatch: pytest.MonkeyPatch,
    before: Callable[[Path], None],
    after: Callable[[Path], object] = lambda _source: None,
) -> None:
    """The next move lets a writer change the file just `before` it (and `after` it)."""
    real = move_durably

    def move(source: Path, target: Path, mode: int = 0o640) -> None:
        before(source)
        real(source, target, mode)
        after(source)

    monkeypatch.setattr(files, "move_durably", move)


@pytest.mark.parametrize("change", [replace_atomically, rewrite_in_place, replace_with_a_link])
@pytest.mark.parametrize("succeeded", [True, False])
def test_a_newer_version_that_slips_in_before_the_move_goes_back(
    settings: Settings,
    original: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Path], None],
    succeeded: bool,
) -> None:
    version = version_of(original)
    racing_move(monkeypatch, change)
    moved = archive_original(
        settings, FileRef("p", "report.txt"), 1, succeeded, "bad", version=version
    )
    assert moved is None  # this job's version is gone: nothing of its to archive
    assert original.read_bytes() == NEW  # the newer version waits in the inbox
    folder = settings.folder("done" if succeeded else "failed", "p")
    assert not folder.exists() or list(folder.iterdir()) == []  # no stray reason file


def test_if_the_name_is_taken_again_the_newer_version_comes_back_beside_it(
    settings: Settings, original: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = original.parent
    version = version_of(original)
    # A third version lands between the move and the put-back.
    racing_move(
        monkeypatch, replace_atomically, lambda path: path.write_bytes(b"a third version\n")
    )
    assert archive_original(settings, FileRef("p", "report.txt"), 1, True, version=version) is None
    assert original.read_bytes() == b"a third version\n"
    assert (inbox / "report.job1.txt").read_bytes() == NEW


def test_the_version_that_ran_is_archived_as_before(settings: Settings, original: Path) -> None:
    moved = archive_original(
        settings, FileRef("p", "report.txt"), 1, True, version=version_of(original)
    )
    assert moved is not None and moved.read_bytes() == OLD and not original.exists()


def test_the_put_back_needs_no_hard_link(
    settings: Settings, original: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With fs.protected_hardlinks, a daemon may not link a submitter's file: the put-back
    # renames it instead.
    def refused(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refused)
    version = version_of(original)
    racing_move(monkeypatch, replace_atomically)
    assert archive_original(settings, FileRef("p", "report.txt"), 1, True, version=version) is None
    assert original.read_bytes() == NEW


def test_rename_noreplace_never_overwrites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    for fallback in (False, True):
        if fallback:  # a libc without renameat2: a check, then a rename
            monkeypatch.setattr(atomic, "_RENAMEAT2", None)
        source.write_text("new")
        target.write_text("kept")
        with pytest.raises(FileExistsError):
            rename_noreplace(source, target)
        assert target.read_text() == "kept" and source.read_text() == "new"
        target.unlink()
        rename_noreplace(source, target)
        assert target.read_text() == "new" and not source.exists()
        target.unlink()
