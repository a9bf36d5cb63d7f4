"""Pure decisions of the sandbox: the limits of one task, the step a task is, and what
the end of a child means. No processes here; unit tested without I/O."""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Any, Literal

from worker.config import Settings

Limit = Literal["cpu", "memory", "time", "job_timeout"]

# What each task is, for the reason a person reads ("... while reading HTML").
_READERS = {
    "text": "text",
    "html": "HTML",
    "pdf": "PDF",
    "json": "JSON",
    "jsonl": "JSON Lines",
    "csv": "CSV",
}
_STEPS = {
    "check_batch_lines": "checking the lines of an OpenAI Batch file",
    "parse_and_validate": "validating the JSON result",
    "compile_grammar": "checking the JSON Schema",
}


@dataclass(frozen=True)
class SandboxLimits:
    """The limits of every task, and the shape of the pool."""

    cpu_seconds: float = 30.0
    memory_bytes: int = 1 << 30
    timeout: float = 60.0
    processes: int = 2
    recycle_after: int = 500

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxLimits:
        """The limits `settings` set (parse_cpu_seconds, parse_memory_bytes, ...)."""
        return cls(
            settings.parse_cpu_seconds,
            settings.parse_memory_bytes,
            settings.parse_timeout,
            settings.sandbox_processes,
            settings.sandbox_recycle_after,
        )


def describe(task: str, args: tuple[Any, ...]) -> str:
    """The step a task is, in words: `reading HTML`, `validating the JSON result`."""
    if task == "read_input":
        reader = args[1] if len(args) > 1 else "text"
        return f"reading {_READERS.get(str(reader), str(reader))}"
    return _STEPS.get(task, f"running {task}")


def task_until(now: float, deadline: float | None, timeout: float) -> tuple[float, Limit]:
    """When a task started at `now` must end, and which limit that is: the sandbox's
    wall-clock limit or, when it comes first, the job's own deadline (job_timeout)."""
    own = now + timeout
    if deadline is not None and deadline < own:
        return deadline, "job_timeout"
    return own, "time"


def cpu_soft_limit(used: float, limit: float) -> int:
    """RLIMIT_CPU's soft value for a task in a child that has used `used` CPU seconds:
    the limit counts a process's whole life, so each task gets `limit` more (whole
    seconds, rounded up: the kernel counts whole seconds)."""
    return max(1, math.ceil(used + limit))


def over_limit(cpu_used: float, address_space: int, limits: SandboxLimits) -> Limit | None:
    """The limit a task is over, from the parent's view of its child (the check that
    holds where setrlimit is not allowed): CPU seconds of the task, bytes mapped."""
    if cpu_used > limits.cpu_seconds:
        return "cpu"
    if address_space > limits.memory_bytes:
        return "memory"
    return None


def size_text(value: int) -> str:
    """1073741824 -> `1 GiB`, 536870912 -> `512 MiB`."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            amount = value / size
            shown = f"{amount:.0f}" if amount == int(amount) else f"{amount:.1f}"
            return f"{shown} {unit}"
    return f"{value} bytes"


def _seconds(value: float) -> str:
    return f"{value:g}"


def limit_reason(limit: Limit, limits: SandboxLimits, job_seconds: float | None = None) -> str:
    """`over the 30 s CPU limit` and the like."""
    if limit == "cpu":
        return f"over the {_seconds(limits.cpu_seconds)} s CPU limit"
    if limit == "memory":
        return f"over the {size_text(limits.memory_bytes)} memory limit"
    if limit == "job_timeout":
        spent = f" ({_seconds(round(job_seconds, 1))} s)" if job_seconds is not None else ""
        return f"job_timeout reached{spent}"
    return f"over the {_seconds(limits.timeout)} s time limit"


# Signals a child brings on itself while it works on its task: the kernel's SIGXCPU at
# RLIMIT_CPU, and a C parser that aborts or faults (an allocation RLIMIT_AS refused, or a
# bug the input triggers). Each is the input's doing and comes again on a retry.
_SELF_INFLICTED = frozenset(
    {signal.SIGXCPU, signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL}
)


def killed_from_outside(
    returncode: int | None, cpu_total: float = 0.0, cpu_hard_limit: float | None = None
) -> bool:
    """Whether a child that the parent did not kill was ended by a signal that no limit of
    its task explains: the host's OOM killer or an operator (SIGKILL), a SIGTERM or SIGHUP
    sent to the process group. Such an end is not the input's fault: the job is retried
    (and max_attempts still bounds an input that truly brings the OOM killer each time).

    `cpu_total`: the child's CPU seconds over its whole life, as last read from /proc;
    `cpu_hard_limit`: its hard RLIMIT_CPU where finite. The kernel sends SIGKILL, not
    SIGXCPU, at the hard limit (the soft one is clamped to it), so a SIGKILL within a
    second of that limit is a CPU limit hit, not a kill from outside."""
    if returncode is None or returncode >= 0:
        return False  # unkillable, or an exit of its own: the parser's doing
    signum = -returncode
    if signum in _SELF_INFLICTED:
        return False
    if signum == signal.SIGKILL and cpu_hard_limit is not None:
        return cpu_total < cpu_hard_limit - 1.0
    return True


def death_reason(returncode: int | None, limits: SandboxLimits) -> str:
    """Why a child that we did not kill ended, from its exit status."""
    if returncode is None:
        return "the parser stopped answering"
    if returncode == -signal.SIGXCPU:
        return limit_reason("cpu", limits)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode in (signal.SIGKILL, signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS):
            # A C parser that cannot allocate aborts or faults; the kernel's OOM killer sends
            # SIGKILL. Either way, say which limit was likely hit.
            return (
                f"the parser crashed ({name}; the memory limit is {size_text(limits.memory_bytes)})"
            )
        return f"the parser crashed ({name})"
    return f"the parser exited with status {returncode}"
