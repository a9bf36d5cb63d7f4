"""A sandbox child: `python -m worker.sandbox.child --requests FD --replies FD --memory N`.

It limits its own address space (RLIMIT_AS) once, imports every parser once (so a task
pays milliseconds, not imports), says `ready`, then answers one task at a time: each
gets `cpu_seconds` more of RLIMIT_CPU (the kernel sends SIGXCPU, which ends the child).
A MemoryError ends the child after its reply: its heap may be in any state. It exits
at end of file on its request pipe, so also when the daemon dies (a task under way
runs at most to its CPU limit first). Not PR_SET_PDEATHSIG: that fires when the thread
that started the child ends, and children are started from the slots' threads.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
from typing import Any

from worker.sandbox.framing import ChannelClosed, read_blocking, write_blocking
from worker.sandbox.limits import cpu_soft_limit

EXIT_MEMORY = 3


def _set_limit(which: int, soft: int, lower_hard: bool) -> bool:
    """Set a resource limit; False where it is not allowed (a seccomp filter that denies
    setrlimit/prlimit64: the parent's own checks then enforce the limit)."""
    try:
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, soft if lower_hard else hard))
    except (OSError, ValueError):
        return False
    return True


def _first_to_go() -> None:
    """Ask the kernel's OOM killer to pick this child before the daemon (raising one's own
    oom_score_adj needs no privilege); it matters where RLIMIT_AS cannot be set."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _answer(name: str, args: tuple[Any, ...]) -> tuple[str, Any]:
    from worker.sandbox import tasks

    try:
        return "ok", tasks.run(name, args)
    except MemoryError:
        return "memory", None
    except Exception as exc:
        return "error", exc


def _reply(fd: int, reply: tuple[str, Any]) -> None:
    try:
        write_blocking(fd, reply)
    except MemoryError:
        write_blocking(fd, ("memory", None))
    except Exception as exc:  # an exception or result that cannot be pickled
        write_blocking(fd, ("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def serve(requests: int, replies: int, memory: int) -> int:
    """Answer tasks until the parent closes the request pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the daemon's to handle
    _first_to_go()
    _set_limit(resource.RLIMIT_CORE, 0, lower_hard=True)  # SIGXCPU must not dump core
    # 0: the parent enforces every limit (tests of that path; a denied setrlimit is the same).
    limited = memory > 0 and _set_limit(resource.RLIMIT_AS, memory, lower_hard=True)
    from worker.sandbox import tasks

    tasks.warm()
    write_blocking(replies, ("ready", {"pid": os.getpid(), "rlimits": limited}))
    while True:
        try:
            name, args, cpu_seconds = read_blocking(requests)
        except ChannelClosed:
            return 0
        _set_limit(resource.RLIMIT_CPU, cpu_soft_limit(_cpu_used(), cpu_seconds), False)
        reply = _answer(name, args)
        _reply(replies, reply)
        if reply[0] == "memory":
            return EXIT_MEMORY


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m worker.sandbox.child`."""
    parser = argparse.ArgumentParser(prog="worker.sandbox.child")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--replies", type=int, required=True)
    parser.add_argument("--memory", type=int, required=True)
    options = parser.parse_args(argv)
    try:
        return serve(options.requests, options.replies, options.memory)
    except BrokenPipeError:  # the parent closed the pool (or died): nobody to answer
        return 0


if __name__ == "__main__":
    sys.exit(main())
