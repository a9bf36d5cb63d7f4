"""Atomic publishing: a failed write (disk full) leaves neither a partial file nor a temp."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path

import pytest

from worker.io.atomic import is_stale_temp, remove_stale_temps, temp_name, write_atomic


def no_space(_fd: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"old and complete\n")
    monkeypatch.setattr("worker.io.atomic.os.fsync", no_space)
    with pytest.raises(OSError) as raised:
        write_atomic(target, b"new" * 1000)
    assert raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old and complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_disk_full_on_a_new_file_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.io.atomic.os.fsync", no_space)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "out.txt", b"data")
    assert list(tmp_path.iterdir()) == []


def test_before_replace_can_veto_publishing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    seen: list[list[str]] = []

    def veto() -> None:
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError):
        write_atomic(target, b"data", before_replace=veto)
    assert len(seen[0]) == 1 and seen[0][0].endswith(".tmp")  # data was on disk, unpublished
    assert list(tmp_path.iterdir()) == []
    write_atomic(target, b"data", before_replace=lambda: None)
    assert target.read_bytes() == b"data"


@pytest.mark.parametrize("name", ["a" * 250, "東" * 80 + ".txt.md", "x", "é" * 127])
def test_temp_names_fit_name_max_and_are_recognised(name: str, tmp_path: Path) -> None:
    temp = temp_name(name)
    assert len(os.fsencode(temp)) <= 255
    assert is_stale_temp(temp, mtime=0, now=100, max_age=10)
    write_atomic(tmp_path / name, b"ok")  # no ENAMETOOLONG for the temp file
    assert (tmp_path / name).read_bytes() == b"ok"


def test_stale_temp_rule() -> None:
    temp = ".report.txt.md.0a1b2c3d.tmp"
    assert is_stale_temp(temp, mtime=100, now=200, max_age=60)
    assert not is_stale_temp(temp, mtime=100, now=150, max_age=60)  # may still be written
    for other in ("report.txt.md", ".report.tmp", "notes.0a1b2c3d.tmp", ".x.0A1B2C3D.tmp"):
        assert not is_stale_temp(other, mtime=0, now=1000, max_age=60), other


def test_remove_stale_temps_only_removes_old_temps(tmp_path: Path) -> None:
    old = tmp_path / ".a.txt.0a1b2c3d.tmp"
    fresh = tmp_path / ".b.txt.0a1b2c3d.tmp"
    result = tmp_path / "a.txt"
    for path in (old, fresh, result):
        path.write_text("x")
    os.utime(old, (1000, 1000))
    now = fresh.stat().st_mtime + 1
    assert remove_stale_temps(tmp_path, max_age=60, now=now) == [old]
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, result.name]
    assert remove_stale_temps(tmp_path / "missing", max_age=60, now=now) == []


def test_a_temp_file_being_written_is_never_stale(tmp_path: Path) -> None:
    # Its writer waits (for the database, through an outage) before the rename: the
    # recovery sweep must not take the temp file from under it, however old it is.
    seen: list[Path] = []

    def wait_long() -> None:
        (temp,) = tmp_path.glob(".out.txt.*.tmp")
        os.utime(temp, (1000, 1000))
        seen.extend(remove_stale_temps(tmp_path, max_age=60, now=10_000))

    write_atomic(tmp_path / "out.txt", b"published", before_replace=wait_long)
    assert seen == []
    assert (tmp_path / "out.txt").read_bytes() == b"published"


def test_submitting_a_file_with_a_255_byte_name_works(tmp_path: Path) -> None:
    from worker.config import load_settings
    from worker.io.submit import copy_into_inbox

    settings = load_settings(data_dir=tmp_path / "data")
    name = "é" * 125 + ".txt"  # 254 bytes: the temp name must be cut, not the input's
    source = tmp_path / name
    source.write_text("hello")
    submitted = copy_into_inbox(settings, "summarize", source)
    assert submitted.ref.name == name
    assert (settings.folder("inbox", "summarize") / name).read_text() == "hello"
    assert [p.name for p in settings.folder("inbox", "summarize").iterdir()] == [name]


def test_a_guarded_write_keeps_the_file_its_check_says_to_keep(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"final")
    assert not write_atomic(target, b"stale", keep=lambda path: path.read_bytes() == b"final")
    assert target.read_bytes() == b"final"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temp left
    assert write_atomic(target, b"newer", keep=lambda path: False)
    assert target.read_bytes() == b"newer"


def test_guarded_writes_check_and_rename_one_at_a_time(tmp_path: Path) -> None:
    # A stale writer checks (nothing final there yet) and is slow to rename; a final write
    # meanwhile must wait for it, not land in between and then be overwritten.
    target = tmp_path / "status.json"
    checked, go_on = threading.Event(), threading.Event()

    def check_then_stall(path: Path) -> bool:
        final_there = path.exists() and path.read_bytes() == b"final"
        checked.set()
        assert go_on.wait(5)
        return final_there

    stale = threading.Thread(
        target=write_atomic, args=(target, b"stale"), kwargs={"keep": check_then_stall}
    )
    final = threading.Thread(
        target=write_atomic, args=(target, b"final"), kwargs={"keep": lambda path: False}
    )
    stale.start()
    try:
        assert checked.wait(5)
        final.start()
        final.join(0.3)
        assert final.is_alive()  # waits for the stale write's check and rename
    finally:
        go_on.set()
        stale.join(5)
        if final.ident is not None:
            final.join(5)
    assert not stale.is_alive() and not final.is_alive()
    assert target.read_bytes() == b"final"


def test_a_guarded_write_waits_for_its_folder_within_a_bound_and_only_for_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.io.atomic import folder_lock

    target = tmp_path / "a" / "status.json"
    target.parent.mkdir()
    target.write_bytes(b"old")
    monkeypatch.setattr("worker.io.atomic.FOLDER_LOCK_SECONDS", 0.2)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with folder_lock(target.parent):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        with pytest.raises(TimeoutError):
            write_atomic(target, b"new", keep=lambda path: False)
        assert target.read_bytes() == b"old"
        assert sorted(p.name for p in target.parent.iterdir()) == ["status.json"]
        write_atomic(target, b"unguarded")  # writes without `keep` take no lock
        assert target.read_bytes() == b"unguarded"
        other = tmp_path / "b" / "status.json"  # another folder: not held up
        assert write_atomic(other, b"other", keep=lambda path: False)
    finally:
        release.set()
        holder.join(5)
    assert not holder.is_alive()
    assert write_atomic(target, b"new", keep=lambda path: False)
    assert target.read_bytes() == b"new"


def test_a_guarded_write_beats_its_heartbeat_while_it_waits_for_its_folder(
    tmp_path: Path,
) -> None:
    """The wait follows a database call (the lease check) with no beat between them: it
    beats as it waits, so the two never add up to a stall."""
    from worker import liveness
    from worker.io.atomic import folder_lock

    folder = tmp_path / "a"
    folder.mkdir()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with folder_lock(folder):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    heartbeat = liveness.Heartbeat("slot-0", 1.5)
    heartbeat.busy()
    liveness.bind(heartbeat)
    try:
        assert held.wait(5)
        threading.Timer(2.5, release.set).start()
        with folder_lock(folder, timeout=10):
            assert not heartbeat.stalled(), f"silent for {heartbeat.silent_for():.2f} s"
            assert heartbeat.silent_for() < 1.5
    finally:
        liveness.bind(None)
        release.set()
        holder.join(5)


def test_a_folder_a_submitter_holds_open_or_locked_does_not_stall_guarded_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Outbox folders are group-readable: anyone allowed to read results can open one and
    # flock it. The guard must not depend on that lock.
    target = tmp_path / "status.json"
    monkeypatch.setattr("worker.io.atomic.FOLDER_LOCK_SECONDS", 0.2)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert write_atomic(target, b"new", keep=lambda path: False)
    finally:
        os.close(fd)
    assert target.read_bytes() == b"new"
