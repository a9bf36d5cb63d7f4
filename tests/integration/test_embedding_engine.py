"""The embedding engine with the real Gemma model loaded as an embedding model (mean
pooling): batched and alone give the same vector, vectors have length 1, an over-long
input fails alone, long inputs can be chunked, and waits end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from worker.errors import GenerationInterrupted, InputError, PromptTooLong
from worker.llm.embedding import EmbeddingEngine, EmbeddingOptions, Embeddings
from worker.llm.engine import EngineOptions
from worker.llm.model_files import ModelFile

pytestmark = pytest.mark.timeout(300)

N_CTX = 48
SENTENCES = [
    "The library opens in March with forty thousand books.",
    "Interest rates rose again, and the stock market fell for a third day.",
    "Penguins huddle together to survive the Antarctic winter.",
    "Invoice 1042 is overdue; please pay within ten days.",
]


def never() -> bool:
    return False


@pytest.fixture(scope="module")
def engine(gguf: Path) -> Iterator[EmbeddingEngine]:
    loaded = EmbeddingEngine(
        ModelFile("gemma-embed", gguf, None),
        EngineOptions(n_ctx=N_CTX, n_threads=1),
        EmbeddingOptions(n_ctx=N_CTX, n_batch=128, max_sequences=8, pooling="mean"),
        verify=False,
    )
    yield loaded
    loaded.close()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def long_text(engine: EmbeddingEngine, at_least: int) -> str:
    text = SENTENCES[0]
    while engine.count_tokens(text) <= at_least:
        text += " " + SENTENCES[len(text) % len(SENTENCES)]
    return text


def test_the_model_embeds_with_its_dimensions_and_mean_pooling(engine: EmbeddingEngine) -> None:
    assert engine.dimensions == 640  # Gemma 3 270M's hidden size
    assert engine.pooling == "mean"
    assert engine.n_ctx == N_CTX
    result = engine.embed(SENTENCES[:2], never)
    assert len(result.vectors) == 2
    assert all(v.shape == (640,) and v.dtype == np.float32 for v in result.vectors)
    assert result.tokens == [engine.count_tokens(s) for s in SENTENCES[:2]]
    # Different texts point different ways; the same text the same way.
    assert cosine(result.vectors[0], result.vectors[1]) < 0.99


def test_vectors_are_normalized_unless_asked_not_to(engine: EmbeddingEngine) -> None:
    unit = engine.embed([SENTENCES[2]], never).vectors[0]
    raw = engine.embed([SENTENCES[2]], never, normalize=False).vectors[0]
    assert abs(float(np.linalg.norm(unit)) - 1.0) < 1e-5
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 0.1
    assert cosine(unit, raw) > 0.99999


def test_a_text_gets_the_same_vector_alone_and_batched_with_others(
    engine: EmbeddingEngine,
) -> None:
    alone = engine.embed([SENTENCES[3]], never).vectors[0]
    calls_before = engine.stats.decode_calls
    results: dict[int, Embeddings] = {}
    start = threading.Barrier(4)

    def caller(index: int) -> None:
        start.wait()
        texts = [SENTENCES[3]] if index == 0 else SENTENCES[index - 1 : index + 1]
        results[index] = engine.embed(texts, never)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 4
    batched = results[0].vectors[0]
    # The same text, the same vector up to the kernels' rounding: llama.cpp computes a
    # matrix product with more rows by other kernels (AVX-512 here: 0.0044 at most in
    # one component of a unit vector), never another text's tokens.
    assert cosine(alone, batched) > 0.999, cosine(alone, batched)  # 0.9998 measured
    assert float(np.abs(alone - batched).max()) < 0.02
    # Seven sequences from four callers went through in fewer decode calls than sequences.
    assert engine.stats.decode_calls - calls_before < 7


def test_an_over_long_input_fails_alone(engine: EmbeddingEngine) -> None:
    too_long = long_text(engine, N_CTX)
    outcome: dict[str, object] = {}

    def neighbour() -> None:
        outcome["vectors"] = engine.embed(SENTENCES, never).vectors

    thread = threading.Thread(target=neighbour)
    thread.start()
    with pytest.raises(PromptTooLong, match=rf"allows {N_CTX} \(n_ctx\)"):
        engine.embed([too_long], never)
    with pytest.raises(PromptTooLong, match=r"^input 1: input is \d+ tokens"):
        engine.embed([SENTENCES[0], too_long], never)
    thread.join(timeout=120)
    assert len(outcome["vectors"]) == 4  # type: ignore[arg-type]


def test_a_long_input_is_chunked_and_averaged_when_asked(engine: EmbeddingEngine) -> None:
    text = long_text(engine, 2 * N_CTX + 5)  # three chunks
    tokens = engine.count_tokens(text)
    result = engine.embed([text], never, long_input="chunk")
    vector = result.vectors[0]
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    # Each of the three chunks carries its own BOS.
    assert result.tokens == [tokens + 2]
    # The average is close to its parts: the mean of the first chunk's sentences.
    first = engine.embed([SENTENCES[0]], never).vectors[0]
    assert cosine(vector, first) > 0.5
    # The same input gives the same vector again.
    assert np.allclose(engine.embed([text], never, long_input="chunk").vectors[0], vector)


def test_an_empty_input_is_an_input_error(engine: EmbeddingEngine) -> None:
    with pytest.raises(InputError, match="empty input"):
        engine.embed(["  \n"], never)


def test_a_caller_that_stops_stops_waiting(
    engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.llm import embedding

    # A caller looks at its stop flag each wait step: short steps, so that the 100
    # inputs below outlast several of them on any machine.
    monkeypatch.setattr(embedding, "WAIT_STEP_SECONDS", 0.01)
    looks: list[bool] = []

    def stop_after_the_first_look() -> bool:
        looks.append(True)
        return len(looks) > 1

    before = engine.stats.sequences
    with pytest.raises(GenerationInterrupted, match="stopped"):
        # 100 inputs (about 1,600 tokens) take a second or more on one thread; the caller
        # stops within a wait step and its inputs not yet decoded are skipped.
        engine.embed([SENTENCES[1]] * 100, stop_after_the_first_look)
    # The engine still serves the next caller, and never decoded all the abandoned ones.
    assert len(engine.embed([SENTENCES[2]], never).vectors) == 1
    assert engine.stats.sequences - before < 101


def test_a_caller_already_stopped_queues_nothing(engine: EmbeddingEngine) -> None:
    before = engine.stats.sequences
    with pytest.raises(GenerationInterrupted, match="stopped"):
        engine.embed([SENTENCES[0]] * 6, lambda: True)
    engine.embed([SENTENCES[1]], never)  # done only after anything queued before it
    assert engine.stats.sequences - before == 1


def test_close_frees_the_engine_and_later_calls_fail_cleanly(gguf: Path) -> None:
    engine = EmbeddingEngine(
        ModelFile("gemma-embed", gguf, None),
        EngineOptions(n_threads=1),
        EmbeddingOptions(n_ctx=32, n_batch=32, max_sequences=2, pooling="mean"),
        verify=False,
    )
    engine.embed([SENTENCES[0]], never)
    engine.close()
    engine.close()  # twice is fine
    with pytest.raises(GenerationInterrupted, match="engine closed"):
        engine.embed([SENTENCES[0]], never)


def whole_graph_engine(gguf: Path) -> EmbeddingEngine:
    return EmbeddingEngine(
        ModelFile("gemma-embed", gguf, None),
        EngineOptions(n_ctx=N_CTX, n_threads=1),
        EmbeddingOptions(
            n_ctx=N_CTX, n_batch=128, max_sequences=8, pooling="mean", graph_cut=False
        ),
        verify=False,
    )


def test_the_graph_cut_is_kept_for_gemma_and_changes_no_vector(
    engine: EmbeddingEngine, gguf: Path
) -> None:
    # The module's engine stops llama.cpp's graph before the logits; one that runs the
    # whole graph gives the same vectors (bit for bit on this CPU; float noise allowed).
    assert engine.graph_cut
    whole = whole_graph_engine(gguf)
    try:
        assert not whole.graph_cut
        expected = whole.embed(SENTENCES, never).vectors
    finally:
        whole.close()
    got = engine.embed(SENTENCES, never).vectors
    for a, b in zip(expected, got, strict=True):
        assert np.max(np.abs(a - b)) < 1e-5


@pytest.mark.parametrize("node", [b"norm", b"no-such-node"])
def test_a_cut_that_changes_the_vectors_or_never_stops_is_refused_at_load(
    gguf: Path, monkeypatch: pytest.MonkeyPatch, node: bytes
) -> None:
    # Stopping at the first node named `norm` (an RMS norm whose weight is applied by the
    # next node) gives other vectors; a graph with no node of the name never stops. The
    # load's probe sees either, and the engine runs the whole graph, with right answers.
    from worker.llm import graph_cut

    monkeypatch.setattr(graph_cut, "TOKEN_VECTORS_NODE", node)
    wrong = EmbeddingEngine(
        ModelFile("gemma-embed", gguf, None),
        EngineOptions(n_ctx=N_CTX, n_threads=1),
        EmbeddingOptions(n_ctx=N_CTX, n_batch=128, max_sequences=8, pooling="mean"),
        verify=False,
    )
    monkeypatch.undo()
    whole = whole_graph_engine(gguf)
    try:
        assert not wrong.graph_cut
        a = wrong.embed([SENTENCES[2]], never).vectors[0]
        b = whole.embed([SENTENCES[2]], never).vectors[0]
        assert np.max(np.abs(a - b)) < 1e-5
    finally:
        wrong.close()
        whole.close()
