"""The inference engine: llama.cpp behind a small interface. No job or file logic here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from worker.errors import PromptTooLong
from worker.llm.generation import Generation


@dataclass(frozen=True)
class Completion:
    """Generated text and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


# The shortest bound on a single llama_decode call before the watchdog calls it hung.
MIN_DECODE_STALL_SECONDS = 120.0


def decode_stall_seconds(stall_seconds: float) -> float:
    """The decode heartbeat's bound for the `stall_seconds` setting: never below
    MIN_DECODE_STALL_SECONDS (one decode call of a big batch on a slow CPU takes long),
    and never below the setting, so an operator who raises stall_seconds for a slow box
    is not overruled by the engine."""
    return max(stall_seconds, MIN_DECODE_STALL_SECONDS)


@dataclass(frozen=True)
class EngineOptions:
    """llama.cpp parameters that the settings control."""

    n_ctx: int = 2048
    n_threads: int | None = None
    n_gpu_layers: int = 0
    seed: int = 0
    # A single llama_decode call running longer than this is a hung decode (the watchdog).
    decode_stall_seconds: float = MIN_DECODE_STALL_SECONDS


class Engine(Protocol):
    """What the runner needs from an engine."""

    n_ctx: int

    @property
    def metadata(self) -> Mapping[str, str]:
        """GGUF metadata (architecture, chat template, ...)."""
        ...

    @property
    def control_tokens(self) -> frozenset[str]:
        """Texts that are control tokens when special parsing is on (`<eos>`, ...)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` on its own (no BOS, control-token text not parsed)."""
        ...

    def complete(
        self,
        prompt: str,
        generation: Generation,
        should_stop: Callable[[], bool],
        shared_prefix: str | None = None,
    ) -> Completion:
        """Generate a completion of `prompt`; raise PromptTooLong or GenerationInterrupted.

        `shared_prefix`: the start of `prompt` that many jobs share (a pipeline's
        instructions); an engine may compute it once and reuse it.
        """
        ...


def context_error(prompt_tokens: int, n_ctx: int, max_tokens: int) -> PromptTooLong | None:
    """The error for a prompt that leaves no room for `max_tokens`, or None if it fits."""
    allowed = n_ctx - max_tokens
    if prompt_tokens <= allowed:
        return None
    return PromptTooLong(
        f"input is {prompt_tokens} tokens; the context allows {max(allowed, 0)} "
        f"(n_ctx {n_ctx} minus max_tokens {max_tokens})"
    )
