"""Lazy grammar sampling gives exactly the tokens of the grammar applied to every token,
whether a refused pick is settled among the best candidates or over the whole vocabulary."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from worker.llm import sampling
from worker.llm.batched import BatchedEngine, BatchOptions
from worker.llm.engine import EngineOptions
from worker.llm.generation import Generation
from worker.llm.model_files import ModelFile
from worker.llm.sampling import GrammarStats

pytestmark = pytest.mark.timeout(600)

SCHEMA = {
    "type": "object",
    "properties": {
        "people": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 4},
        "amount": {"type": "string", "maxLength": 30},
    },
    "required": ["people", "amount"],
}
PROMPTS = [
    "Text: On 4 May 2021, Maria Lopez of Northwind Bank approved a loan of $250,000.\nJSON:",
    "Text: Tom Okafor and Sara Lind paid 1,200 euros for the new scanner.\nJSON:",
    "Text: The weather was mild and the garden was full of birds.\nJSON:",
]


def run(
    gguf: Path, monkeypatch: pytest.MonkeyPatch, lazy: bool, candidates: tuple[int, ...]
) -> tuple[list[str], float, GrammarStats]:
    monkeypatch.setattr(sampling, "LAZY_GRAMMAR", lazy)
    monkeypatch.setattr(sampling, "CANDIDATES", candidates)
    engine = BatchedEngine(
        ModelFile("gemma", gguf, None),
        EngineOptions(n_ctx=512, n_threads=2),
        BatchOptions(parallel=1, batch_invariant=True),
    )
    generation = Generation(max_tokens=48, temperature=0, repeat_penalty=1.0, json_schema=SCHEMA)
    started = time.monotonic()
    try:
        texts = [engine.complete(p, generation, lambda: False).text for p in PROMPTS]
    finally:
        engine.close()
    return texts, time.monotonic() - started, engine.stats.grammar


def test_lazy_and_full_grammar_sampling_give_the_same_json(
    gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, full_seconds, _ = run(gguf, monkeypatch, lazy=False, candidates=())
    whole, whole_seconds, whole_stats = run(gguf, monkeypatch, lazy=True, candidates=())
    lazy, lazy_seconds, stats = run(gguf, monkeypatch, lazy=True, candidates=(256, 8192))
    # Two candidates: most refusals find no allowed one, or tie at the floor, and go on
    # to the whole vocabulary; the few settled among two must still be the same tokens.
    few, _, few_stats = run(gguf, monkeypatch, lazy=True, candidates=(2,))
    print(
        f"grammar on every token {full_seconds:.1f} s, lazy {whole_seconds:.1f} s, "
        f"lazy with candidates {lazy_seconds:.1f} s; {stats}"
    )
    assert whole == full
    assert lazy == full
    assert few == full
    assert all(text.lstrip().startswith("{") for text in lazy)  # under the grammar
    # The paths under test were taken: refusals settled among the candidates, fewer
    # whole-vocabulary passes than without them.
    assert whole_stats.whole_vocabulary > 0 and whole_stats.candidates == 0
    assert stats.candidates > 0
    assert stats.whole_vocabulary < whole_stats.whole_vocabulary
    assert few_stats.whole_vocabulary > stats.whole_vocabulary


def test_numpy_argmax_picks_what_llamas_greedy_sampler_picks(
    gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = Generation(max_tokens=32, temperature=0, repeat_penalty=1.0)
    texts = []
    for argmax in (False, True):
        monkeypatch.setattr(sampling, "ARGMAX", argmax)
        engine = BatchedEngine(
            ModelFile("gemma", gguf, None),
            EngineOptions(n_ctx=512, n_threads=2),
            BatchOptions(parallel=1, batch_invariant=True),
        )
        try:
            texts.append([engine.complete(p, plain, lambda: False).text for p in PROMPTS])
        finally:
            engine.close()
    assert texts[0] == texts[1]
    assert all(texts[1])
