"""Lazy grammar sampling gives exactly the tokens of the grammar applied to every token."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from worker.llm import sampling
from worker.llm.batched import BatchedEngine, BatchOptions
from worker.llm.engine import EngineOptions
from worker.llm.generation import Generation
from worker.llm.model_files import ModelFile

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


def run(gguf: Path, lazy: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], float]:
    monkeypatch.setattr(sampling, "LAZY_GRAMMAR", lazy)
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
    return texts, time.monotonic() - started


def test_lazy_and_full_grammar_sampling_give_the_same_json(
    gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, full_seconds = run(gguf, lazy=False, monkeypatch=monkeypatch)
    lazy, lazy_seconds = run(gguf, lazy=True, monkeypatch=monkeypatch)
    print(f"grammar on every token {full_seconds:.1f} s, lazy {lazy_seconds:.1f} s")
    assert lazy == full
    assert all(text.lstrip().startswith("{") for text in lazy)  # under the grammar
