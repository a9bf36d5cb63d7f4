"""The safe reader: the input's faults are InputErrors, the machine's are retried."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from worker.errors import InputError
from worker.io.safe_read import TransientReadError, read_beneath, read_regular_file


@pytest.mark.parametrize(
    "code", [errno.EMFILE, errno.ENFILE, errno.EIO, errno.ENOMEM, errno.EAGAIN]
)
def test_a_transient_open_error_is_an_oserror_not_an_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    path = tmp_path / "in.txt"
    path.write_text("x")

    def failing_open(*_args: object, **_kwargs: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("worker.io.safe_read.os.open", failing_open)
    with pytest.raises(TransientReadError) as info:
        read_regular_file(path, 100)
    assert not isinstance(info.value, InputError)
    assert isinstance(info.value, OSError) and info.value.errno == code


def test_a_link_a_fifo_and_a_big_file_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("x" * 10)
    (tmp_path / "link.txt").symlink_to(tmp_path / "real.txt")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InputError, match="symbolic link"):
        read_regular_file(tmp_path / "link.txt", 100)
    with pytest.raises(InputError, match="not a regular file"):
        read_regular_file(tmp_path / "fifo", 100)
    with pytest.raises(InputError, match="max_input_bytes"):
        read_regular_file(tmp_path / "real.txt", 5)


def test_read_beneath_follows_no_link_below_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_text("secret")
    (root / "swapped").symlink_to(outside)
    assert read_beneath(root, "sub/a.txt", 100) == b"mine"
    with pytest.raises(InputError, match="symbolic link"):
        read_beneath(root, "swapped/a.txt", 100)
    with pytest.raises(InputError, match="invalid path"):
        read_beneath(root, "../outside/a.txt", 100)
    with pytest.raises(FileNotFoundError):
        read_beneath(root, "sub/gone.txt", 100)
