"""A fake engine for fast runner and pipeline tests (the real engine has its own
integration tests)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from worker.errors import GenerationInterrupted
from worker.llm.engine import Completion, context_error
from worker.llm.generation import Generation


class Crash(BaseException):
    """The process dies here: nothing is recorded."""


class FakeEngine:
    """Answers with `answer(prompt)` (by default the prompt's length) and counts words as
    tokens, a BOS included; refuses prompts longer than `n_ctx` as the real engine does.

    `fail` is raised by every call, after the call is recorded; `block` makes calls wait
    until they are told to stop; `crash_after` kills the "process" (raises Crash) on the
    call after that many, before it is recorded.
    """

    metadata: dict[str, str] = {}  # noqa: RUF012 - read-only
    control_tokens: frozenset[str] = frozenset()

    def __init__(
        self,
        answer: Callable[[str], str] | None = None,
        *,
        n_ctx: int = 2048,
        fail: Exception | None = None,
        block: threading.Event | None = None,
        crash_after: int | None = None,
    ) -> None:
        self.answer = answer or (lambda prompt: f"len={len(prompt)}")
        self.n_ctx = n_ctx
        self.fail = fail
        self.block = block
        self.crash_after = crash_after
        self.calls: list[tuple[str, Generation]] = []
        self.interrupted = threading.Event()
        self._lock = threading.Lock()

    @property
    def prompts(self) -> list[str]:
        """The prompts of the calls so far, in order."""
        return [prompt for prompt, _ in self.calls]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def complete(
        self,
        prompt: str,
        generation: Generation,
        should_stop: Callable[[], bool],
        shared_prefix: str | None = None,
    ) -> Completion:
        prompt_tokens = self.count_tokens(prompt) + 1
        too_long = context_error(prompt_tokens, self.n_ctx, generation.max_tokens)
        if too_long is not None:
            raise too_long
        with self._lock:
            if self.crash_after is not None and len(self.calls) >= self.crash_after:
                raise Crash
            self.calls.append((prompt, generation))
        if self.fail is not None:
            raise self.fail
        if self.block is not None:
            while not should_stop():
                self.block.wait(0.01)
            self.interrupted.set()
            raise GenerationInterrupted("stopped")
        text = self.answer(prompt)
        return Completion(text, prompt_tokens, max(1, self.count_tokens(text)), "stop")
