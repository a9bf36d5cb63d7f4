"""BatchedEngine with the real model when admitting a request fails, and when it is closed
while its decode thread is stuck: one request fails alone, nothing leaks, nothing is freed
under a running thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.errors import GenerationInterrupted
from worker.llm import batched, sampling
from worker.llm.batched import BatchedEngine, BatchOptions
from worker.llm.engine import Completion, EngineOptions
from worker.llm.generation import Generation
from worker.llm.grammar import UnsupportedSchema
from worker.llm.model_files import ModelFile

pytestmark = pytest.mark.timeout(300)

TINY = Generation(max_tokens=4, temperature=0, repeat_penalty=1.0)
# Long enough (> MIN_PREFIX_TOKENS) that the engine evaluates it into a cache sequence.
PREFIX = (
    "Below are short questions, each followed by a short and factual answer written by a "
    "careful librarian who checks every number.\n\n"
)
# Longer than any wait the engine should need for a 4-token answer on 2 cores.
PROMPT_SECONDS = 60.0


@pytest.fixture(scope="module")
def model(gguf: Path) -> ModelFile:
    return ModelFile("gemma-3-270m", gguf, None)


@pytest.fixture
def engine(model: ModelFile) -> Iterator[BatchedEngine]:
    # parallel=1: a slot lost by a failed admission hangs the next request.
    engine = BatchedEngine(
        model, EngineOptions(n_ctx=512, n_threads=2), BatchOptions(parallel=1), verify=False
    )
    yield engine
    engine.close()


def complete_within(
    engine: BatchedEngine, prompt: str, seconds: float = PROMPT_SECONDS, prefix: str | None = None
) -> Completion | BaseException:
    """`engine.complete` from another thread; its result or exception. Fails if it hangs."""
    found: list[Completion | BaseException] = []

    def call() -> None:
        try:
            found.append(engine.complete(prompt, TINY, lambda: False, shared_prefix=prefix))
        except BaseException as exc:  # the test inspects it
            found.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert found, f"complete() did not return within {seconds:.0f} s"
    return found[0]


def test_a_sampler_that_cannot_be_built_fails_its_request_alone(
    engine: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sampling.SamplerChain
    calls: list[int] = []

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("sampler exploded")
        return real(*args, **kwargs)

    monkeypatch.setattr(batched, "SamplerChain", failing_once)
    failed = complete_within(engine, "Question: what is two plus two?\nAnswer:", seconds=20)
    assert isinstance(failed, RuntimeError) and "sampler exploded" in str(failed)
    # parallel=1: this hangs if the failed admission kept its slot.
    answer = complete_within(engine, "Question: what is three plus one?\nAnswer:")
    assert isinstance(answer, Completion) and answer.completion_tokens > 0
    assert engine._active == [] and len(engine._free_slots) == engine.parallel


def test_a_grammar_llama_cpp_refuses_fails_its_request_alone(
    engine: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A grammar that got past every check (there is none known): llama.cpp answers NULL,
    # which used in a chain crashed the process (SIGSEGV).
    monkeypatch.setattr(batched, "compile_grammar", lambda schema, max_tokens: 'root ::= "{" x')
    schema = {"type": "object"}
    found: list[BaseException] = []

    def call() -> None:
        try:
            engine.complete("Reply in JSON:", TINY.model_copy(update={"json_schema": schema}), bool)
        except BaseException as exc:  # the test inspects it
            found.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(20)
    assert found and isinstance(found[0], UnsupportedSchema), found
    assert "llama.cpp refused the grammar" in str(found[0])
    answer = complete_within(engine, "Question: what is three plus one?\nAnswer:")
    assert isinstance(answer, Completion) and answer.completion_tokens > 0


def test_a_failed_prefix_decode_fails_its_request_and_returns_the_cache_sequence(
    engine: BatchedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_seqs = len(engine._cache_seqs)
    real_decode = engine._decode
    calls: list[int] = []

    def failing_once() -> None:
        calls.append(1)
        if len(calls) == 1:  # the first decode of the request: its shared prefix
            raise RuntimeError("llama_decode returned -3")
        real_decode()

    monkeypatch.setattr(engine, "_decode", failing_once)
    failed = complete_within(
        engine, PREFIX + "Question: how many legs has a cat?\nAnswer:", seconds=20, prefix=PREFIX
    )
    assert isinstance(failed, RuntimeError) and "-3" in str(failed)
    assert len(engine._cache_seqs) == cache_seqs, "the cache sequence was not given back"
    assert not engine._prefixes
    answer = complete_within(
        engine, PREFIX + "Question: how many legs has a bird?\nAnswer:", prefix=PREFIX
    )
    assert isinstance(answer, Completion) and answer.completion_tokens > 0
    # Evaluated into a cache sequence this time, and reused by the next request.
    assert len(engine._prefixes) == 1 and len(engine._cache_seqs) == cache_seqs - 1
    evaluated = engine.stats.prompt_tokens_evaluated
    again = complete_within(
        engine, PREFIX + "Question: how many legs has a dog?\nAnswer:", prefix=PREFIX
    )
    assert isinstance(again, Completion)
    assert engine.stats.prompt_tokens_evaluated - evaluated < len(engine.tokenize(PREFIX))


class _Spy:
    """Forwards to the llama_cpp module, remembering which freeing functions were called."""

    FREES = ("llama_free", "llama_model_free", "llama_batch_free")

    def __init__(self, real: Any) -> None:
        self._real = real
        self.freed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._real, name)
        if name not in self.FREES:
            return value

        def record(*args: Any) -> Any:
            self.freed.append(name)
            return value(*args)

        return record


def test_close_never_frees_llama_cpp_under_a_running_decode_thread(
    model: ModelFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = BatchedEngine(
        model, EngineOptions(n_ctx=512, n_threads=2), BatchOptions(parallel=1), verify=False
    )
    spy = _Spy(engine._ll)
    engine._ll = spy
    entered = threading.Event()
    release = threading.Event()
    real_step: Callable[[], None] = engine._step

    def stuck_step() -> None:
        entered.set()
        release.wait(120)  # a llama_decode call that does not return
        real_step()

    monkeypatch.setattr(engine, "_step", stuck_step)
    waiting = threading.Thread(
        target=complete_within, args=(engine, "Question: why?\nAnswer:", 60.0), daemon=True
    )
    waiting.start()
    assert entered.wait(30), "the decode thread never stepped"
    try:
        engine.close(join_timeout=0.5)
        assert spy.freed == [], "llama.cpp memory freed while the decode thread runs"
    finally:
        release.set()
    engine._thread.join(30)
    assert not engine._thread.is_alive()
    waiting.join(30)
    engine.close()  # the thread is gone now: this frees, once
    assert sorted(spy.freed) == sorted(_Spy.FREES)
    engine.close()
    assert len(spy.freed) == len(_Spy.FREES), "freed twice"


def test_a_closed_engine_interrupts_its_callers(model: ModelFile) -> None:
    engine = BatchedEngine(
        model, EngineOptions(n_ctx=512, n_threads=2), BatchOptions(parallel=1), verify=False
    )
    engine.close()
    with pytest.raises(GenerationInterrupted):
        engine.complete("Question: why?\nAnswer:", TINY, lambda: False)
