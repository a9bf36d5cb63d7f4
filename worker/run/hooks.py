"""The completion hook: a pipeline's optional `on_final` command, run when one of its jobs
(a file, a row, a swept file, an OpenAI Batch file once gathered) reaches a final state.

- Run without a shell: the argv is the pipeline's list; an item that is exactly one of
  the placeholders (`worker.pipelines.hook_args`) is replaced by its value as one whole
  argv item, so job data (a file name) is never parsed as a command or a shell word.
- Never in the job's way: jobs hand hooks to a bounded queue (`HOOK_QUEUE` entries; a
  full queue drops the hook with a warning) and one thread runs them, each with the
  pipeline's `on_final_timeout` (the whole process group is killed past it).
- Its exit status and the end of its output are logged (`hook.finished` /
  `hook.failed`); a failing hook never changes the job.
- It runs with a minimal environment (PATH, LANG), not the daemon's (which may hold a
  database password), from `/`, with no standard input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from worker.background import BackgroundLoop
from worker.batch.ids import batch_id_for
from worker.logs import event
from worker.pipelines.hook_args import hook_argv
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import ClaimedJob

HOOK_QUEUE = 256
OUTPUT_TAIL = 2000
HOOK_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class HookCall:
    job_id: int
    pipeline: str
    argv: tuple[str, ...]
    timeout: float


class HookRunner(BackgroundLoop):
    """One thread that runs the queued hooks, one at a time."""

    name = "hooks"
    interval = 0.0
    # A hook's own timeout bounds a step; the margin covers killing and logging it.
    stall_after = 3600.0 + 60.0

    def __init__(self, max_queue: int = HOOK_QUEUE) -> None:
        super().__init__()
        self._queue: queue.Queue[HookCall] = queue.Queue(maxsize=max_queue)
        self.dropped = 0

    def submit(self, call: HookCall) -> bool:
        """Queue a hook (never blocks); False (logged) when the queue is full."""
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            self.dropped += 1
            event("hook.dropped", logging.WARNING, job_id=call.job_id, pipeline=call.pipeline)
            return False
        return True

    def pending(self) -> int:
        return self._queue.qsize()

    def step(self) -> float | None:
        try:
            call = self._queue.get(timeout=0.5)
        except queue.Empty:
            return 0.0
        try:
            run_hook(call)
        except Exception as exc:  # a hook must never stop the daemon
            event("hook.failed", logging.WARNING, job_id=call.job_id, error=repr(exc))
        return 0.0

    def after_stop(self) -> None:
        left = self._queue.qsize()
        if left:
            event("hook.unrun", logging.WARNING, count=left)


def final_hook(
    pipelines: Mapping[str, Pipeline], hooks: HookRunner
) -> Callable[[ClaimedJob, str, str | None], None]:
    """The runner's `on_final`: queue the pipeline's hook for a job that ended (a file, a
    row, a swept file, a batch file once gathered; never each line or record of a file)."""

    def on_final(job: ClaimedJob, status: str, output: str | None) -> None:
        if job.parent_id is not None:
            return
        pipeline = pipelines.get(job.pipeline)
        if pipeline is None or not pipeline.on_final:
            return
        batch = pipeline.reader == "openai-batch" and job.source_path is not None
        values = {
            "{output}": output or "",
            "{source}": job.source_path or "",
            "{job_id}": str(job.id),
            "{pipeline}": job.pipeline,
            "{status}": status,
            "{batch_id}": batch_id_for(job.id) if batch else "",
        }
        argv = tuple(hook_argv(pipeline.on_final, values))
        hooks.submit(HookCall(job.id, job.pipeline, argv, pipeline.on_final_timeout))

    return on_final


def _tail(handle: IO[bytes]) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - OUTPUT_TAIL))
    data: bytes = handle.read()
    return data.decode("utf-8", errors="replace")


def run_hook(call: HookCall) -> int | None:
    """Run one hook to its end or its timeout; returns its exit status (None: killed)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                list(call.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(HOOK_ENV),
                cwd="/",
                close_fds=True,
                start_new_session=True,  # its own process group: a timeout kills it all
            )
        except OSError as exc:
            event(
                "hook.failed",
                logging.WARNING,
                job_id=call.job_id,
                pipeline=call.pipeline,
                program=call.argv[0],
                error=f"cannot start: {exc.strerror or exc}",
            )
            return None
        try:
            code: int | None = proc.wait(timeout=call.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        fields: dict[str, Any] = dict(
            job_id=call.job_id,
            pipeline=call.pipeline,
            program=call.argv[0],
            exit_code=code,
            seconds=round(time.monotonic() - started, 3),
            stdout=_tail(out),
            stderr=_tail(err),
        )
    if code == 0:
        event("hook.finished", **fields)
    elif code is None:
        event(
            "hook.failed", logging.WARNING, reason=f"timed out after {call.timeout:g} s", **fields
        )
    else:
        event("hook.failed", logging.WARNING, reason=f"exit status {code}", **fields)
    return code
