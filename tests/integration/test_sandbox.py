"""The parsing sandbox with real child processes: a runaway CPU loop, a memory bomb, a
sleeper and a crash each cost their task only (killed at their limit, with the reason),
and the next task in the pool works; recycling, deadlines, beats, closing; real readers
on real bombs; and what a normal file costs (printed, not asserted)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from tests.files import make_operator_bomb, make_pdf
from worker.batch.request import LineError
from worker.errors import GenerationInterrupted, InputError, InputTooCostly
from worker.io.readers import Document, ReaderName, ReadLimits, read_input
from worker.llm.grammar import InvalidResult, UnsupportedSchema
from worker.sandbox import (
    ChildKilled,
    JobDeadline,
    Sandbox,
    SandboxBroken,
    SandboxClosed,
    SandboxLimits,
)
from worker.sandbox.parsing import Parsing

pytestmark = pytest.mark.timeout(120)

LIMITS = SandboxLimits(cpu_seconds=1.0, memory_bytes=512 << 20, timeout=4.0, processes=1)


@pytest.fixture(params=[True, False], ids=["rlimits", "parent-checks"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """One child; with its own rlimits, or with the parent's checks alone (as under a
    seccomp filter that denies setrlimit)."""
    with Sandbox(LIMITS, rlimits=request.param) as pool:
        assert pool.call("probe.echo", "warm") == "warm"
        yield pool


def still_works(pool: Sandbox) -> None:
    assert pool.call("probe.echo", {"next": 1}) == {"next": 1}
    assert pool.size == 1


def test_a_runaway_cpu_loop_is_killed_at_the_cpu_limit(sandbox: Sandbox) -> None:
    before = sandbox.pids()
    started = time.monotonic()
    with pytest.raises(InputTooCostly) as killed:
        sandbox.call("probe.spin")
    assert str(killed.value) == (
        "input too costly to parse: over the 1 s CPU limit while running probe.spin"
    )
    assert time.monotonic() - started < LIMITS.timeout  # CPU, not the wall clock
    still_works(sandbox)
    assert sandbox.pids() != before  # a new child


def test_a_memory_bomb_is_stopped_at_the_memory_limit(sandbox: Sandbox) -> None:
    with pytest.raises(InputTooCostly) as stopped:
        sandbox.call("probe.allocate", 4 << 30)
    assert str(stopped.value) == (
        "input too costly to parse: over the 512 MiB memory limit while running probe.allocate"
    )
    still_works(sandbox)


def test_a_sleeper_is_killed_at_the_wall_clock_limit(sandbox: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(InputTooCostly) as killed:
        sandbox.call("probe.sleep", 60)
    assert str(killed.value) == (
        "input too costly to parse: over the 4 s time limit while running probe.sleep"
    )
    assert LIMITS.timeout <= time.monotonic() - started < LIMITS.timeout + 3
    still_works(sandbox)


def test_a_crashing_parser_fails_its_task_with_the_reason(sandbox: Sandbox) -> None:
    with pytest.raises(InputTooCostly, match=r"the parser crashed \(SIGABRT"):
        sandbox.call("probe.abort")
    still_works(sandbox)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_child_killed_from_outside_mid_task_is_retried_not_the_inputs_fault(
    sandbox: Sandbox, signum: int
) -> None:
    # The host's OOM killer or an operator: neither the parent nor a limit sent it.
    (pid,) = sandbox.pids()
    killer = threading.Timer(0.5, os.kill, (pid, signum))
    killer.start()
    with pytest.raises(ChildKilled, match=rf"killed from outside \({signal.Signals(signum).name}"):
        sandbox.call("probe.sleep", 30)
    killer.join()
    assert not isinstance(ChildKilled("x"), InputError)  # the runner retries it
    still_works(sandbox)


def test_the_jobs_own_deadline_comes_first_when_it_is_earlier() -> None:
    with Sandbox(LIMITS) as pool:
        started = time.monotonic()
        with pytest.raises(JobDeadline, match="job_timeout reached while running probe.sleep"):
            pool.call("probe.sleep", 60, deadline=started + 1.0)
        assert time.monotonic() - started < 3
        still_works(pool)


def test_the_caller_beats_while_it_waits_and_a_stop_interrupts() -> None:
    beats: list[float] = []
    with Sandbox(LIMITS) as pool:
        pool.call("probe.sleep", 2.0, beat=lambda: beats.append(time.monotonic()))
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert len(beats) >= 5 and max(gaps) < 1.0
        stop_at = time.monotonic() + 0.5
        parsing = Parsing(pool, should_stop=lambda: time.monotonic() > stop_at)
        with pytest.raises(GenerationInterrupted, match="stopped while parsing"):
            parsing.call("probe.sleep", 30)
        assert time.monotonic() - stop_at < 2
        still_works(pool)


def test_a_child_killed_while_idle_costs_no_task() -> None:
    with Sandbox(SandboxLimits(processes=1)) as pool:
        pool.call("probe.echo", 1)
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        assert pool.call("probe.echo", 2) == 2  # a new child, and no InputTooCostly
        assert pool.pids() != [pid]


def test_a_child_is_recycled_after_n_tasks() -> None:
    with Sandbox(SandboxLimits(processes=1, recycle_after=3)) as pool:
        first = [pool.call("probe.echo", n) for n in range(3)]
        pids = pool.pids()
        assert first == [0, 1, 2] and pool.stats["recycled"] == 1
        assert [pool.call("probe.echo", n) for n in range(3)] == [0, 1, 2]
        assert pool.pids() != pids and pool.stats["recycled"] == 2


def test_tasks_of_several_callers_share_the_pool() -> None:
    results: list[object] = []
    with Sandbox(SandboxLimits(processes=2)) as pool:
        threads = [
            threading.Thread(target=lambda n=n: results.append(pool.call("probe.sleep", 0.3 + n)))
            for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(results) == [0.3, 1.3, 2.3, 3.3]  # type: ignore[type-var]
        assert pool.size == 2


def test_closing_never_hangs_and_a_call_in_flight_is_released() -> None:
    pool = Sandbox(SandboxLimits(processes=1, timeout=60))
    pool.call("probe.echo", 1)
    failures: list[BaseException] = []

    def busy() -> None:
        try:
            pool.call("probe.sleep", 60)
        except BaseException as exc:
            failures.append(exc)

    caller = threading.Thread(target=busy)
    caller.start()
    time.sleep(0.5)
    started = time.monotonic()
    pool.close()
    caller.join(timeout=10)
    assert time.monotonic() - started < 5
    assert [type(f) for f in failures] == [SandboxClosed]
    assert pool.size == 0
    with pytest.raises(SandboxClosed):
        pool.call("probe.echo", 1)


def test_a_child_that_cannot_start_is_an_installation_problem_not_the_inputs() -> None:
    with (
        Sandbox(SandboxLimits(processes=1), python="/bin/false") as pool,
        pytest.raises(SandboxBroken, match="could not start"),
    ):
        pool.call("probe.echo", 1)


# Real readers and checks -------------------------------------------------------------------


def test_errors_come_back_as_they_were_raised() -> None:
    with Sandbox(SandboxLimits(processes=1)) as pool:
        parsing = Parsing(pool)
        with pytest.raises(InputError, match="not valid UTF-8"):
            parsing.read_input(b"caf\xe9", "text", ReadLimits())
        with pytest.raises(InvalidResult, match="does not match"):
            parsing.validate('{"a": "x"}', {"properties": {"a": {"pattern": "^y$"}}})
        with pytest.raises(UnsupportedSchema, match="linear time"):
            parsing.grammar({"type": "string", "pattern": "(a)\\1"}, 16)
        lines = parsing.check_lines(b'{"custom_id": "a", "method": "GET"}\n', None)
        assert isinstance(lines[0].error, LineError) and lines[0].error.code == "invalid_method"


def test_a_pdf_operator_bomb_is_stopped_and_a_normal_pdf_read() -> None:
    bomb = make_operator_bomb(8_000_000, pages=30)
    with Sandbox(SandboxLimits(cpu_seconds=1.0, processes=1)) as pool:
        parsing = Parsing(pool)
        with pytest.raises(InputTooCostly, match="CPU limit while reading PDF"):
            parsing.read_input(bomb, "pdf", ReadLimits(1_000_000))
        document = parsing.read_input(make_pdf(["Page one.", "Two."]), "pdf", ReadLimits())
        assert document == Document("Page one.\n\nTwo.")


def test_the_cost_of_a_normal_file_is_milliseconds() -> None:
    text = ("The council met on Tuesday to discuss the new library. " * 40).encode()
    html = b"<html><body>" + b"<p>The council met on Tuesday.</p>" * 100 + b"</body></html>"
    with Sandbox(SandboxLimits(processes=1)) as pool:
        parsing = Parsing(pool)
        cases: list[tuple[str, bytes, ReaderName]] = [
            ("text", text, "text"),
            ("html", html, "html"),
        ]
        for name, data, reader in cases:
            parsing.read_input(data, reader, ReadLimits())  # warm
            runs = 50
            started = time.perf_counter()
            for _ in range(runs):
                parsing.read_input(data, reader, ReadLimits())
            sandboxed = (time.perf_counter() - started) / runs
            started = time.perf_counter()
            for _ in range(runs):
                read_input(data, reader, ReadLimits())
            direct = (time.perf_counter() - started) / runs
            print(
                f"\n{name} ({len(data)} bytes): {sandboxed * 1000:.2f} ms in the sandbox, "
                f"{direct * 1000:.2f} ms in process, overhead {(sandboxed - direct) * 1000:.2f} ms"
            )
        print(json.dumps(dict(pool.stats)))
