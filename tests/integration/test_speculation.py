"""Prompt-lookup speculation gives the text of one token per step, token for token."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.workload import INSTRUCTION, SUFFIX, documents
from tests.integration.test_lazy_grammar import SCHEMA
from worker.llm.batched import BatchedEngine, BatchOptions, EngineStats
from worker.llm.engine import EngineOptions
from worker.llm.generation import Generation
from worker.llm.model_files import ModelFile

pytestmark = pytest.mark.timeout(600)

GREEDY = Generation(max_tokens=40, temperature=0, repeat_penalty=1.0)
JSON = GREEDY.model_copy(update={"json_schema": SCHEMA})
# Copying prompts: reports to summarise (names, numbers), and a text to extract from.
PROMPTS = [(INSTRUCTION + doc[:400] + SUFFIX, GREEDY) for doc in documents(3, seed=5)] + [
    ("Text: Tom Okafor and Sara Lind of Harbor Tools paid 1,200 euros.\nJSON:", JSON)
]


def run(gguf: Path, speculate: int) -> tuple[list[str], EngineStats]:
    # batch_invariant: a row's arithmetic does not depend on how many rows share the
    # call, so the drafts' rows give the logits one token at a time would.
    engine = BatchedEngine(
        ModelFile("gemma", gguf, None),
        EngineOptions(n_ctx=1024, n_threads=2),
        BatchOptions(parallel=1, batch_invariant=True, speculate=speculate),
    )
    try:
        texts = [engine.complete(p, g, lambda: False).text for p, g in PROMPTS]
    finally:
        engine.close()
    return texts, engine.stats


def test_speculation_gives_the_same_text_in_fewer_decode_calls(gguf: Path) -> None:
    plain, plain_stats = run(gguf, speculate=0)
    drafted, stats = run(gguf, speculate=6)
    print(
        f"decode calls {plain_stats.decode_calls} -> {stats.decode_calls}; drafts "
        f"{stats.draft_tokens_accepted}/{stats.draft_tokens} accepted"
    )
    assert drafted == plain
    assert stats.draft_tokens_accepted > 0
    assert stats.decode_calls < plain_stats.decode_calls
    assert stats.generated_tokens == plain_stats.generated_tokens
