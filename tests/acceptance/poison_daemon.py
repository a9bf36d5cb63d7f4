"""`edge-worker` with faults injected, for tests only: a prompt containing POISON_MARKER
aborts the process (SIGABRT), as a crash inside llama.cpp would; one containing
STUCK_MARKER hangs its slot without a sign of life, as a stuck call would. Not part of
the product; the product has no test-only code paths.

    python tests/acceptance/poison_daemon.py run
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from worker.cli import app as cli
from worker.llm.batched import BatchedEngine
from worker.llm.engine import Completion
from worker.llm.generation import Generation

POISON_MARKER = "POISON-PILL-7f3a"
STUCK_MARKER = "STUCK-CALL-5c1e"

_real_complete = BatchedEngine.complete


def _complete(
    self: BatchedEngine,
    prompt: str,
    generation: Generation,
    should_stop: Callable[[], bool],
    shared_prefix: str | None = None,
) -> Completion:
    if POISON_MARKER in prompt:
        os.abort()
    if STUCK_MARKER in prompt:
        time.sleep(3600)  # no beat, no should_stop: a call that never returns
    return _real_complete(self, prompt, generation, should_stop, shared_prefix)


if __name__ == "__main__":
    BatchedEngine.complete = _complete  # type: ignore[method-assign]
    sys.argv = ["edge-worker", *sys.argv[1:]]
    cli.main()
