"""`Sandbox`: a small pool of warm child processes that run parsing tasks under limits.

Children are started with `subprocess` (`python -m worker.sandbox.child`), never forked
from the daemon (which holds llama.cpp threads and the model's memory), and talk over
two pipes each. A call takes an idle child (or waits for one, beating), sends the task
and waits for the reply until the earlier of the job's deadline and `timeout`, calling
`beat` at least every POLL seconds. Limits, and who enforces them:

- CPU time: the parent reads the child's CPU time from /proc while it waits and kills it
  past the limit; the child's RLIMIT_CPU (whole seconds, SIGXCPU) is the backstop.
- memory: the child's RLIMIT_AS (MemoryError, or a C parser that aborts); where denied,
  the parent reads its address space from /proc and kills it.
- wall clock: the parent kills the child at the deadline.

A task over a limit, or a child that dies under it, costs that task only: the child is
replaced at once and the call raises InputTooCostly. A child killed from outside (the
host's OOM killer, an operator: a signal that neither the parent nor a limit sent) is
not the input's fault: the call raises ChildKilled and the job is retried. A child is
recycled after `recycle_after` tasks. Every wait here is bounded; `close` never hangs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from worker.errors import GenerationInterrupted, InputTooCostly
from worker.logs import event
from worker.sandbox.framing import Channel, ChannelClosed
from worker.sandbox.limits import (
    Limit,
    SandboxLimits,
    death_reason,
    describe,
    killed_from_outside,
    limit_reason,
    over_limit,
    task_until,
)

Beat = Callable[[], None]
# Longest silence between two beats of a waiting caller, and between two checks of a
# running child's CPU time and memory.
POLL = 0.2
# Bounded waits for a child to exit after its pipes closed or a SIGKILL.
EXIT_WAIT = 2.0
# A new child imports every parser before it says `ready` (about 0.7 s on an idle
# machine); past this it is broken, not slow.
START_TIMEOUT = 60.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class SandboxClosed(GenerationInterrupted):
    """The sandbox closed (the daemon is stopping) while the task waited or ran: the job
    is released, not failed."""


class SandboxBroken(RuntimeError):
    """A child died before it was ready: an installation problem, not the input's fault
    (the job is retried; the child's stderr says why)."""


class ChildKilled(RuntimeError):
    """The child running the task was killed from outside (the host's OOM killer, an
    operator's kill), not by the parent and not by a limit: not the input's fault, so
    the job is retried (a RuntimeError, like SandboxBroken: the runner retries those)."""


class JobDeadline(GenerationInterrupted):
    """The job's own deadline (job_timeout) came while it waited on the sandbox; the
    runner reports it as a job_timeout."""


@dataclass(eq=False)
class _Child:
    proc: subprocess.Popen[bytes]
    channel: Channel
    tasks: int = 0
    ready: bool = False
    rlimits: bool = False
    cpu_at_start: float = 0.0
    cpu_total: float = 0.0  # CPU seconds of its whole life, as last read from /proc
    info: dict[str, Any] = field(default_factory=dict)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, from /proc (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def _address_space(pid: int) -> int:
    """Bytes mapped by a process (VmSize), from /proc; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[0]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def _cpu_hard_limit() -> float | None:
    """The hard RLIMIT_CPU a child inherits from the daemon (children lower only the soft
    one), None where it is unlimited."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    return None if hard == resource.RLIM_INFINITY else float(hard)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Sandbox:
    """A pool of warm parsing children. `call(task, *args, deadline=..., beat=...)`."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        python: str = sys.executable,
        rlimits: bool = True,
        start: bool = True,
    ) -> None:
        """`rlimits=False` leaves every limit to the parent's checks (what happens under a
        seccomp filter that denies setrlimit; tests use it). `start`: warm the children now."""
        self.limits = limits or SandboxLimits()
        self._python = python
        self._rlimits = rlimits
        self._lock = threading.Condition()
        self._idle: list[_Child] = []
        self._all: set[_Child] = set()
        self._closed = False
        self.stats: Counter[str] = Counter()
        if start:
            with self._lock:
                for _ in range(self.limits.processes):
                    self._idle.append(self._spawn())

    # The interface --------------------------------------------------------------------
    def call(
        self, task: str, *args: Any, deadline: float | None = None, beat: Beat | None = None
    ) -> Any:
        """Run `task(*args)` in a child and return its result, or raise what it raised.

        `deadline`: time.monotonic() by which the job must end (its job_timeout), or None.
        `beat`: called at least once a second while the caller waits.
        InputTooCostly when the task runs past a limit or its child dies of it; ChildKilled
        when its child is killed from outside; JobDeadline at the job's deadline;
        SandboxClosed once the sandbox is closing.
        """
        step = describe(task, args)
        child = self._take(deadline, beat)
        try:
            kind, value = self._exchange(
                child, (task, args, self.limits.cpu_seconds), deadline, step, beat
            )
        except BaseException:
            self._discard(child)
            raise
        if kind == "memory":  # the child exits by itself: its heap may be in any state
            self._discard(child)
            event("sandbox.limit", logging.WARNING, limit="memory", step=step)
            raise InputTooCostly(f"{limit_reason('memory', self.limits)} while {step}")
        self._give_back(child)
        self.stats["calls"] += 1
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """Stop every child (bounded: a child that does not exit is killed). Calls in
        flight raise SandboxClosed."""
        with self._lock:
            self._closed = True
            idle, busy = list(self._idle), list(self._all - set(self._idle))
            self._idle.clear()
            self._lock.notify_all()
        for child in busy:  # their callers see the end of the reply pipe and clean up
            self._kill(child.proc)
        for child in idle:
            self._end(child)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """Children alive now (idle or busy)."""
        with self._lock:
            return len(self._all)

    def pids(self) -> list[int]:
        """Process ids of the children alive now."""
        with self._lock:
            return sorted(c.proc.pid for c in self._all)

    # Children -------------------------------------------------------------------------
    def _spawn(self) -> _Child:
        """Start one child (called with the lock held; Popen returns in milliseconds: the
        child warms up on its own while the caller waits for its reply)."""
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        command = [
            self._python,
            "-m",
            "worker.sandbox.child",
            "--requests",
            str(request_read),
            "--replies",
            str(reply_write),
            "--memory",
            str(self.limits.memory_bytes if self._rlimits else 0),
        ]
        try:
            proc = subprocess.Popen(
                command,
                pass_fds=(request_read, reply_write),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            os.close(request_read)
            os.close(reply_write)
        child = _Child(proc, Channel(request_write, reply_read))
        self._all.add(child)
        self.stats["spawned"] += 1
        return child

    def _take(self, deadline: float | None, beat: Beat | None) -> _Child:
        """An idle child, or a new one while the pool is not full; else wait for one (until
        the job's deadline, or twice the task timeout)."""
        until = deadline if deadline is not None else time.monotonic() + 2 * self.limits.timeout
        with self._lock:
            while True:
                if self._closed:
                    raise SandboxClosed("the parsing sandbox is closing")
                while self._idle:
                    child = self._idle.pop()
                    if child.proc.poll() is None:
                        return child
                    # Ended while idle (killed from outside): not the next input's fault.
                    child.channel.close()
                    self._all.discard(child)
                if len(self._all) < self.limits.processes:
                    return self._spawn()
                left = until - time.monotonic()
                if left <= 0:
                    if deadline is not None:
                        raise JobDeadline("job_timeout reached while waiting for a parser")
                    raise SandboxClosed("every parsing child stayed busy; try again later")
                self._lock.wait(min(POLL, left))
                if beat is not None:
                    beat()

    def _give_back(self, child: _Child) -> None:
        child.tasks += 1
        if child.tasks >= self.limits.recycle_after:
            self.stats["recycled"] += 1
            self._discard(child, gently=True)
            return
        with self._lock:
            if self._closed:
                self._all.discard(child)
            else:
                self._idle.append(child)
                self._lock.notify()
                return
        self._end(child)

    def _discard(self, child: _Child, gently: bool = False) -> None:
        """Stop `child` (gently: end of file, else SIGKILL) and start its replacement, so the
        next task finds a warm child."""
        if gently:
            self._end(child)
        else:
            self._kill(child.proc)
            child.channel.close()
        with self._lock:
            self._all.discard(child)
            if not self._closed and len(self._all) < self.limits.processes:
                self._idle.append(self._spawn())
                self._lock.notify()

    def _end(self, child: _Child) -> None:
        child.channel.close()
        try:
            child.proc.wait(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:
            self._kill(child.proc)
        with self._lock:
            self._all.discard(child)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> int | None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        try:
            return proc.wait(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:  # unkillable (D state): leave it to the kernel
            return None

    # One task -------------------------------------------------------------------------
    def _exchange(
        self,
        child: _Child,
        message: tuple[str, tuple[Any, ...], float],
        deadline: float | None,
        step: str,
        beat: Beat | None,
    ) -> tuple[str, Any]:
        started = time.monotonic()
        # A new child's imports are not the task's: its clock starts at `ready`.
        wait = self.limits.timeout if child.ready else START_TIMEOUT
        until, limit = task_until(started, deadline, wait)
        child.channel.start_send(message)
        if child.ready:
            child.cpu_at_start = self._cpu_baseline(child)
        while True:
            left = until - time.monotonic()
            if left <= 0:
                self._kill(child.proc)
                if not child.ready and limit == "time":
                    raise SandboxBroken(f"a parsing child did not start in {START_TIMEOUT:g} s")
                self._over(limit, step, started)
            try:
                reply = child.channel.pump(min(POLL, left))
            except ChannelClosed:
                code, we_killed = self._reap(child.proc)
                if self._closed:
                    raise SandboxClosed("the parsing sandbox closed") from None
                self.stats["died"] += 1
                event(
                    "sandbox.child_died",
                    logging.WARNING,
                    pid=child.proc.pid,
                    returncode=code,
                    step=step,
                    ready=child.ready,
                )
                if not child.ready:
                    raise SandboxBroken(
                        f"a parsing child could not start ({death_reason(code, self.limits)}); "
                        "see the daemon's stderr"
                    ) from None
                self._died(child, code, we_killed, step)
            if reply is not None:
                if reply[0] != "ready":
                    return (str(reply[0]), reply[1])
                child.ready, child.info = True, dict(reply[1])
                child.rlimits = bool(child.info.get("rlimits"))
                child.cpu_at_start = self._cpu_baseline(child)
                started = time.monotonic()
                until, limit = task_until(started, deadline, self.limits.timeout)
                continue
            if beat is not None:
                beat()
            if child.ready:  # RLIMIT_CPU counts whole seconds; this is the finer check
                over = self._parent_check(child)
                if over is not None:
                    self._kill(child.proc)
                    self._over(over, step, started)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> tuple[int | None, bool]:
        """The exit status of a child whose reply pipe closed, and whether the parent had
        to kill it: it closed its pipe because it is ending, so it gets a bounded wait to
        end by itself first (a SIGKILL of ours must not read as one from outside)."""
        try:
            return proc.wait(timeout=EXIT_WAIT), False
        except subprocess.TimeoutExpired:
            return Sandbox._kill(proc), True

    def _died(self, child: _Child, code: int | None, we_killed: bool, step: str) -> NoReturn:
        """Raise what the end of a ready child during its task means."""
        if we_killed:  # it closed its pipe and then hung: the parser's doing
            raise InputTooCostly(f"{death_reason(None, self.limits)} while {step}") from None
        hard = _cpu_hard_limit() if child.rlimits else None
        if killed_from_outside(code, child.cpu_total, hard):
            assert code is not None  # killed_from_outside says False for None
            self.stats["killed_outside"] += 1
            raise ChildKilled(
                f"the parsing child was killed from outside ({_signal_name(-code)}: the "
                f"host's OOM killer or an operator, not a limit) while {step}; the job is "
                "retried"
            ) from None
        if code == -signal.SIGKILL:  # the kernel's kill at the hard RLIMIT_CPU
            raise InputTooCostly(f"{limit_reason('cpu', self.limits)} while {step}") from None
        raise InputTooCostly(f"{death_reason(code, self.limits)} while {step}") from None

    @staticmethod
    def _cpu_baseline(child: _Child) -> float:
        child.cpu_total = _cpu_seconds(child.proc.pid) or 0.0
        return child.cpu_total

    def _parent_check(self, child: _Child) -> Limit | None:
        child.cpu_total = _cpu_seconds(child.proc.pid) or child.cpu_total
        used = child.cpu_total - child.cpu_at_start
        return over_limit(used, _address_space(child.proc.pid), self.limits)

    def _over(self, limit: Limit, step: str, started: float) -> None:
        self.stats[f"over_{limit}"] += 1
        seconds = round(time.monotonic() - started, 3)
        event("sandbox.limit", logging.WARNING, limit=limit, step=step, seconds=seconds)
        if limit == "job_timeout":
            raise JobDeadline(f"job_timeout reached while {step}")
        raise InputTooCostly(f"{limit_reason(limit, self.limits)} while {step}")
