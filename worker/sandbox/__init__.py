"""The parsing sandbox: untrusted bytes become text, records, requests or validated JSON
in warm child processes, each task under a CPU-time limit, an address-space limit and a
wall-clock deadline, so a blow-up costs only its own job.

`pool.py` holds `Sandbox` (the pool the daemon, the handlers and the CLI call),
`child.py` the loop a child runs (`python -m worker.sandbox.child`), `framing.py` the
length-prefixed pickle messages on the pipes between them, `limits.py` the pure
decisions (the limits of one task, what a child's death means), and `tasks.py` the
tasks a child can run. A task over a limit kills its child only; the call raises
`InputTooCostly` ("input too costly to parse: ..."), which the runner records as a
failed job: not retried, never a crash. A child killed from outside (the OOM killer,
an operator) raises `ChildKilled` instead: not the input's fault, the job is retried.
"""

from __future__ import annotations

from worker.errors import InputTooCostly
from worker.sandbox.limits import SandboxLimits
from worker.sandbox.pool import (
    ChildKilled,
    JobDeadline,
    Sandbox,
    SandboxBroken,
    SandboxClosed,
)

__all__ = [
    "ChildKilled",
    "InputTooCostly",
    "JobDeadline",
    "Sandbox",
    "SandboxBroken",
    "SandboxClosed",
    "SandboxLimits",
]
