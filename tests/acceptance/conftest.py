"""Acceptance tests run the real `edge-worker` process on a temp data dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.acceptance.daemon import Daemon, daemon_env, write_pipelines

DOCUMENT = (
    "The city council met on Tuesday to discuss the new public library. The library will "
    "open in March 2027 and will have 40,000 books, a children's reading room and free "
    "internet access. Construction cost 12 million dollars, paid by a state grant and local "
    "taxes. Mayor Anna Weber said the library would be a place for everyone.\n"
)


# A pipeline that generates a few tokens from a short prompt: many jobs finish quickly.
TINY_PIPELINE = """
description = "tests: a few tokens"
prompt = "Question: {{ input }}\\nAnswer:"
[generation]
max_tokens = 4
temperature = 0.0
"""


@pytest.fixture
def tiny_pipelines(tmp_path: Path) -> Path:
    """A pipelines folder with only `tiny` (max_tokens 4)."""
    return write_pipelines(tmp_path / "tiny-pipelines", tiny=TINY_PIPELINE)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def env(data_dir: Path, gguf: Path) -> dict[str, str]:
    return daemon_env(data_dir, gguf.parent)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[Daemon]]:
    """Daemons started by a test; any still running at the end are killed."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


class StartDaemon(Protocol):
    def __call__(
        self,
        env: dict[str, str],
        name: str = "daemon",
        *args: str,
        program: list[str] | None = None,
        ready: bool = True,
    ) -> Daemon: ...


@pytest.fixture
def start_daemon(tmp_path: Path, daemons: list[Daemon]) -> StartDaemon:
    """Start `edge-worker run ARGS` logging to `<tmp>/<name>.log`, killed at the end of the
    test if still running; waits for `daemon.ready` unless `ready` is False."""

    def start(
        env: dict[str, str],
        name: str = "daemon",
        *args: str,
        program: list[str] | None = None,
        ready: bool = True,
    ) -> Daemon:
        daemon = Daemon(env, tmp_path / f"{name}.log", *args, program=program)
        daemons.append(daemon)
        if ready:
            daemon.wait_for("daemon.ready")
        return daemon

    return start
