"""The tasks a sandbox child runs, by name: each turns untrusted bytes (or text) into
something the daemon uses. The `probe.*` tasks exist for tests and the benchmark: they
misbehave on purpose (spin, allocate, sleep, abort) or echo."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def _read_input(*args: Any) -> Any:
    from worker.io.readers import read_input

    return read_input(*args)


def _check_batch_lines(*args: Any) -> Any:
    from worker.batch.lines import check_lines

    return check_lines(*args)


def _parse_and_validate(*args: Any) -> Any:
    from worker.llm.grammar import parse_and_validate

    return parse_and_validate(*args)


def _compile_grammar(*args: Any) -> Any:
    from worker.llm.grammar import compile_grammar

    return compile_grammar(*args)


def _spin(seconds: float | None = None) -> int:
    end = None if seconds is None else time.process_time() + seconds
    count = 0
    while end is None or time.process_time() < end:
        count += 1
    return count


def _allocate(size: int, step: int = 16 << 20) -> int:
    held: list[bytearray] = []
    while len(held) * step < size:
        held.append(bytearray(b"x" * step))  # written: resident, not only reserved
    return len(held)


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _abort() -> None:
    os.abort()


def _echo(value: Any) -> Any:
    return value


TASKS: dict[str, Callable[..., Any]] = {
    "read_input": _read_input,
    "check_batch_lines": _check_batch_lines,
    "parse_and_validate": _parse_and_validate,
    "compile_grammar": _compile_grammar,
    "probe.spin": _spin,
    "probe.allocate": _allocate,
    "probe.sleep": _sleep,
    "probe.abort": _abort,
    "probe.echo": _echo,
}


def run(name: str, args: tuple[Any, ...]) -> Any:
    """Run task `name` on `args`; KeyError for an unknown task."""
    return TASKS[name](*args)


def warm() -> None:
    """Import every parser now, once per child, so that a task pays only its own work."""
    import jsonschema  # noqa: F401
    import llama_cpp  # noqa: F401  (the grammar check parses GBNF with llama.cpp)
    import pypdfium2  # noqa: F401
    import re2  # noqa: F401

    import worker.batch.lines
    import worker.io.readers
    import worker.llm.grammar  # noqa: F401
