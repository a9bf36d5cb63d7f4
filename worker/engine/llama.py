"""llama.cpp through llama-cpp-python: the model is loaded once and stays resident."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.engine import (
    Completion,
    GenerationInterrupted,
    ModelError,
    context_error,
)
from worker.engine.model_files import ModelFile, verify_model
from worker.pipelines import Generation

_llama_log = logging.getLogger("edge_worker.llama_cpp")
_log_callback: Any = None


def _route_llama_logs() -> None:
    """Send llama.cpp's own log lines to our logger (debug), not raw to stderr.

    The daemon's stderr is one JSON object per line; stray C-level lines would break that.
    """
    global _log_callback
    if _log_callback is not None:
        return
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def forward(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", errors="replace").rstrip()
        if line:
            _llama_log.log(logging.WARNING if level in (2, 3) else logging.DEBUG, line)

    _log_callback = forward  # keep a reference: ctypes callbacks must outlive their use
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


@dataclass(frozen=True)
class EngineOptions:
    """llama.cpp parameters that the settings control."""

    n_ctx: int = 2048
    n_threads: int | None = None
    n_gpu_layers: int = 0
    seed: int = 0


class LlamaEngine:
    """One resident llama.cpp model."""

    def __init__(self, model: ModelFile, options: EngineOptions, verify: bool = True) -> None:
        if verify:
            verify_model(model)
        from llama_cpp import Llama

        _route_llama_logs()

        self.model = model
        self.options = options
        self.n_ctx = options.n_ctx
        started = time.monotonic()
        try:
            self._llm: Any = Llama(
                model_path=str(model.path),
                n_ctx=options.n_ctx,
                n_threads=options.n_threads or os.cpu_count() or 1,
                n_gpu_layers=options.n_gpu_layers,
                seed=options.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"cannot load model {model.path}: {exc}") from None
        self.load_seconds = time.monotonic() - started

    @property
    def metadata(self) -> dict[str, str]:
        """GGUF metadata (architecture, trained context length, ...)."""
        return dict(self._llm.metadata)

    def tokenize(self, text: str) -> list[int]:
        # special=False: text inside the input can never become control tokens.
        tokens: list[int] = self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        return tokens

    def _free_sampler(self) -> None:
        # Each completion builds a llama.cpp sampler chain (~3 MB with Gemma's 262k
        # vocabulary) whose Python owner sits in a reference cycle, so only the cyclic GC
        # freed it: the soak measured RSS climbing ~3 MB per job between collections
        # (404 -> 462 MB in 120 jobs). Free it now; llama-cpp-python makes a new one per call.
        sampler = getattr(self._llm, "_sampler", None)
        if sampler is not None:
            sampler.close()
            self._llm._sampler = None

    def complete(
        self, prompt: str, generation: Generation, should_stop: Callable[[], bool]
    ) -> Completion:
        """Complete `prompt`; PromptTooLong if it cannot fit, GenerationInterrupted if stopped."""
        tokens = self.tokenize(prompt)
        too_long = context_error(len(tokens), self.n_ctx, generation.max_tokens)
        if too_long is not None:
            raise too_long
        from llama_cpp import StoppingCriteriaList

        interrupted = False

        def stop_requested(_ids: Any, _logits: Any) -> bool:
            nonlocal interrupted
            interrupted = interrupted or should_stop()
            return interrupted

        # No KV reuse across jobs: with Gemma 3 (sliding-window attention) llama-cpp-python's
        # automatic prefix reuse changes greedy outputs depending on the previous job
        # (measured: same prompt, different text after a different prompt). A result must
        # not depend on which job ran before it.
        self._llm.reset()
        try:
            result: Any = self._llm.create_completion(
                prompt=tokens,
                max_tokens=generation.max_tokens,
                temperature=generation.temperature,
                top_p=generation.top_p,
                top_k=generation.top_k,
                min_p=generation.min_p,
                repeat_penalty=generation.repeat_penalty,
                seed=generation.seed if generation.seed is not None else self.options.seed,
                stop=list(generation.stop) or None,
                stopping_criteria=StoppingCriteriaList([stop_requested]),
            )
        finally:
            self._free_sampler()
        if interrupted:
            raise GenerationInterrupted("generation stopped before it finished")
        choice = result["choices"][0]
        usage = result["usage"]
        return Completion(
            text=choice["text"],
            prompt_tokens=int(usage["prompt_tokens"]),
            completion_tokens=int(usage["completion_tokens"]),
            finish_reason=str(choice.get("finish_reason") or "stop"),
        )
