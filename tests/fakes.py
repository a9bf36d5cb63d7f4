"""A fake engine for fast runner tests (the real engine has its own integration tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from worker.engine import Completion, GenerationInterrupted
from worker.pipelines import Generation


class FakeEngine:
    """Answers with the prompt's length; can be told to fail or to block until stopped."""

    n_ctx = 2048

    def __init__(self, fail: Exception | None = None, block: threading.Event | None = None):
        self.fail = fail
        self.block = block
        self.prompts: list[str] = []
        self.interrupted = threading.Event()
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def complete(
        self,
        prompt: str,
        generation: Generation,
        should_stop: Callable[[], bool],
        shared_prefix: str | None = None,
    ) -> Completion:
        with self._lock:
            self.prompts.append(prompt)
        if self.fail is not None:
            raise self.fail
        if self.block is not None:
            while not should_stop():
                self.block.wait(0.01)
            self.interrupted.set()
            raise GenerationInterrupted("stopped")
        return Completion(f"len={len(prompt)}", len(prompt), 3, "stop")
