"""The sandbox's pure decisions: the limits of one task, the step it is, what the end of
a child means, and the errors that travel back from a child."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import signal

import pytest

from worker.batch.request import LineError
from worker.config import load_settings
from worker.errors import InputError, InputTooCostly
from worker.io.jsontext import JSONTooDeep
from worker.io.readers import ReadLimits
from worker.sandbox.framing import HEADER, encode
from worker.sandbox.limits import (
    SandboxLimits,
    cpu_soft_limit,
    death_reason,
    describe,
    killed_from_outside,
    limit_reason,
    over_limit,
    size_text,
    task_until,
)

LIMITS = SandboxLimits(cpu_seconds=30, memory_bytes=1 << 30, timeout=60)


def test_settings_have_sensible_defaults_and_reach_the_limits() -> None:
    limits = SandboxLimits.from_settings(load_settings())
    assert limits == SandboxLimits(30.0, 1 << 30, 60.0, 2, 500)
    custom = SandboxLimits.from_settings(
        load_settings(
            parse_cpu_seconds=2.5,
            parse_memory_bytes=512 << 20,
            parse_timeout=9,
            sandbox_processes=3,
            sandbox_recycle_after=7,
        )
    )
    assert custom == SandboxLimits(2.5, 512 << 20, 9.0, 3, 7)


@pytest.mark.parametrize(
    ("task", "args", "step"),
    [
        ("read_input", (b"", "html", ReadLimits()), "reading HTML"),
        ("read_input", (b"", "pdf", ReadLimits()), "reading PDF"),
        ("read_input", (b"", "jsonl", ReadLimits()), "reading JSON Lines"),
        ("check_batch_lines", (b"", 10), "checking the lines of an OpenAI Batch file"),
        ("parse_and_validate", ("{}", {}), "validating the JSON result"),
        ("compile_grammar", ({}, None), "checking the JSON Schema"),
        ("probe.spin", (), "running probe.spin"),
    ],
)
def test_each_task_names_its_step(task: str, args: tuple[object, ...], step: str) -> None:
    assert describe(task, args) == step


def test_a_task_ends_at_the_earlier_of_its_own_limit_and_the_jobs_deadline() -> None:
    assert task_until(100.0, None, 60) == (160.0, "time")
    assert task_until(100.0, 500.0, 60) == (160.0, "time")
    assert task_until(100.0, 130.0, 60) == (130.0, "job_timeout")


def test_each_task_gets_the_whole_cpu_limit_beyond_what_the_child_used() -> None:
    # RLIMIT_CPU counts the life of the process, in whole seconds.
    assert cpu_soft_limit(0.0, 30) == 30
    assert cpu_soft_limit(12.3, 30) == 43
    assert cpu_soft_limit(0.0, 0.25) == 1


def test_the_parent_check_names_the_limit_passed() -> None:
    assert over_limit(29.9, 900 << 20, LIMITS) is None
    assert over_limit(30.1, 0, LIMITS) == "cpu"
    assert over_limit(1.0, (1 << 30) + 1, LIMITS) == "memory"


def test_reasons_name_the_limit() -> None:
    assert limit_reason("cpu", LIMITS) == "over the 30 s CPU limit"
    assert limit_reason("cpu", SandboxLimits(cpu_seconds=0.25)) == "over the 0.25 s CPU limit"
    assert limit_reason("memory", LIMITS) == "over the 1 GiB memory limit"
    assert limit_reason("time", LIMITS) == "over the 60 s time limit"
    assert size_text(768 << 20) == "768 MiB" and size_text(1536 << 20) == "1.5 GiB"


def test_what_the_end_of_a_child_means() -> None:
    assert death_reason(-signal.SIGXCPU, LIMITS) == "over the 30 s CPU limit"
    assert death_reason(-signal.SIGSEGV, LIMITS) == (
        "the parser crashed (SIGSEGV; the memory limit is 1 GiB)"
    )
    assert death_reason(-signal.SIGTERM, LIMITS) == "the parser crashed (SIGTERM)"
    assert death_reason(3, LIMITS) == "the parser exited with status 3"


@pytest.mark.parametrize(
    ("returncode", "outside"),
    [
        (-signal.SIGKILL, True),  # the host's OOM killer, an operator's kill -9
        (-signal.SIGTERM, True),
        (-signal.SIGHUP, True),
        (-signal.SIGXCPU, False),  # RLIMIT_CPU
        (-signal.SIGABRT, False),  # a C parser refused memory under RLIMIT_AS
        (-signal.SIGSEGV, False),
        (-signal.SIGBUS, False),
        (3, False),  # an exit of its own
        (None, False),
    ],
)
def test_only_a_signal_no_limit_explains_is_a_kill_from_outside(
    returncode: int | None, outside: bool
) -> None:
    assert killed_from_outside(returncode) is outside


def test_a_sigkill_at_the_hard_cpu_limit_is_the_limit_not_a_kill_from_outside() -> None:
    # The kernel sends SIGKILL, not SIGXCPU, when a finite hard RLIMIT_CPU is reached.
    assert not killed_from_outside(-signal.SIGKILL, cpu_total=99.6, cpu_hard_limit=100)
    assert killed_from_outside(-signal.SIGKILL, cpu_total=3.0, cpu_hard_limit=100)


def test_input_too_costly_is_an_input_error_with_its_prefix_and_survives_pickling() -> None:
    error = InputTooCostly("over the 30 s CPU limit while reading HTML")
    assert isinstance(error, InputError)
    assert str(error) == "input too costly to parse: over the 30 s CPU limit while reading HTML"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InputTooCostly and str(copy) == str(error)


def test_line_errors_come_back_from_a_child_with_their_fields() -> None:
    error = LineError("invalid_request", "bad schema", "response_format")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message, copy.param, str(copy)) == (
        "invalid_request",
        "bad schema",
        "response_format",
        "invalid_request: bad schema",
    )


def test_a_message_is_its_length_then_its_pickle() -> None:
    framed = encode({"a": 1})
    (size,) = HEADER.unpack(framed[: HEADER.size])
    assert size == len(framed) - HEADER.size
    assert pickle.loads(framed[HEADER.size :]) == {"a": 1}


# Errors with their own __init__ that a sandbox task can raise: each must come back from
# the child as it was raised (the default pickling calls __init__ with the message).
CROSSING = [
    InputTooCostly("over the 30 s CPU limit while reading HTML"),
    JSONTooDeep(64),
    LineError("invalid_request", "bad schema", "response_format"),
]


@pytest.mark.parametrize("error", CROSSING, ids=lambda e: type(e).__name__)
def test_errors_with_their_own_init_survive_the_sandbox_boundary(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error) and copy.args == error.args
    assert vars(copy) == vars(error)


def test_every_error_a_sandbox_task_can_raise_with_its_own_init_is_checked() -> None:
    # The packages a child imports for its tasks (worker.sandbox.tasks.warm).
    import worker.batch
    import worker.errors
    import worker.io
    import worker.llm.grammar
    import worker.sandbox

    modules = [worker.errors, worker.llm.grammar]
    for package in (worker.batch, worker.io, worker.sandbox):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith(".child"):
                modules.append(importlib.import_module(info.name))
    custom = {
        cls
        for module in modules
        for cls in vars(module).values()
        if inspect.isclass(cls)
        and issubclass(cls, BaseException)
        and cls.__module__.startswith("worker.")
        and "__init__" in cls.__dict__
    }
    assert custom == {type(error) for error in CROSSING}
