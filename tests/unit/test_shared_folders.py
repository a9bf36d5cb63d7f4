"""Shared folders: archived originals and error files never overwrite each other,
folders made below a setgid folder keep setgid, outputs per submitter."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from worker.config import Settings, load_settings
from worker.io.atomic import make_folder, write_atomic
from worker.io.files import FileRef, archive_original, output_folder
from worker.io.naming import free_archive_name


def test_free_archive_name_avoids_originals_and_error_files() -> None:
    taken: set[str] = set()
    assert free_archive_name("report.txt", 7, taken.__contains__) == "report.txt"
    taken = {"report.txt.error.json"}  # an input of that name was archived before
    assert free_archive_name("report.txt", 7, taken.__contains__) == "report.job7.txt"
    taken = {"report.txt", "report.txt.error.json"}  # report.txt failed before
    assert free_archive_name("report.txt.error.json", 8, taken.__contains__) == (
        "report.txt.error.job8.json"
    )
    taken = {"a.txt", "a.job3.txt"}
    assert free_archive_name("a.txt", 3, taken.__contains__) == "a.job3.1.txt"


def test_an_error_file_never_overwrites_an_archived_original(settings: Settings) -> None:
    inbox = settings.folder("inbox", "p")
    inbox.mkdir(parents=True)
    # First an input literally named like the reason file of report.txt fails...
    (inbox / "report.txt.error.json").write_text("the user's own data")
    first = archive_original(settings, FileRef("p", "report.txt.error.json"), 1, False, "bad")
    assert first is not None
    # ...then report.txt fails: its reason goes elsewhere.
    (inbox / "report.txt").write_text("report")
    second = archive_original(settings, FileRef("p", "report.txt"), 2, False, "bad too")
    assert second is not None and second.name == "report.job2.txt"
    assert first.read_text() == "the user's own data"
    failed = settings.folder("failed", "p")
    reason = json.loads((failed / "report.job2.txt.error.json").read_text())
    assert reason["job_id"] == 2


def test_folders_made_below_a_setgid_folder_keep_setgid(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    os.chmod(outbox, 0o2750)
    make_folder(outbox / "new-pipeline" / "1000", 0o750)
    for folder in (outbox / "new-pipeline", outbox / "new-pipeline" / "1000"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o2750
    write_atomic(outbox / "other" / "x.txt", b"x")
    assert stat.S_IMODE((outbox / "other").stat().st_mode) == 0o2750
    plain = tmp_path / "plain"
    make_folder(plain / "sub", 0o750)
    assert stat.S_IMODE((plain / "sub").stat().st_mode) == 0o750


def test_outputs_per_submitter_go_to_the_owners_folder(settings: Settings) -> None:
    assert output_folder(settings, "p", 1000) == settings.folder("outbox", "p")
    per_owner = settings.model_copy(update={"outputs_per_submitter": True})
    assert output_folder(per_owner, "p", 1000) == settings.folder("outbox", "p") / "1000"
    assert output_folder(per_owner, "p", None) == settings.folder("outbox", "p")
    ref = FileRef("p", "report.txt")
    assert ref.output_path(per_owner, "markdown", 42).parts[-2:] == ("42", "report.txt.md")


def test_the_inbox_mode_is_sticky_by_default(settings: Settings) -> None:
    assert settings.inbox_mode == 0o3770
    assert not settings.outputs_per_submitter
    assert load_settings(inbox_mode="2770").inbox_mode == 0o2770  # octal, as documented
