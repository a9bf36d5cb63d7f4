"""`edge-worker` with one fault injected, for tests only: a prompt containing POISON_MARKER
aborts the process (SIGABRT), as a crash inside llama.cpp would. Not part of the product;
the product has no test-only code paths.

    python tests/acceptance/poison_daemon.py run
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from worker.cli import app as cli
from worker.llm.batched import BatchedEngine
from worker.llm.engine import Completion
from worker.llm.generation import Generation

POISON_MARKER = "POISON-PILL-7f3a"

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
    return _real_complete(self, prompt, generation, should_stop, shared_prefix)


if __name__ == "__main__":
    BatchedEngine.complete = _complete  # type: ignore[method-assign]
    sys.argv = ["edge-worker", *sys.argv[1:]]
    cli.main()
