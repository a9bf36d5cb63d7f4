"""Both engines register their decode heartbeat with the bound their options carry (the
`stall_seconds` setting, floored at 120 s: tests/unit/test_decode_stall.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.liveness import LIVENESS
from worker.llm.batched import BatchedEngine, BatchOptions
from worker.llm.embedding import EmbeddingEngine, EmbeddingOptions
from worker.llm.engine import EngineOptions
from worker.llm.model_files import ModelFile

pytestmark = pytest.mark.timeout(300)

OPTIONS = EngineOptions(n_ctx=256, n_threads=1, decode_stall_seconds=333.0)


def test_the_decode_heartbeats_take_their_bound_from_the_options(gguf: Path) -> None:
    model = ModelFile("gemma", gguf, None)
    generation = BatchedEngine(model, OPTIONS, BatchOptions(parallel=1), verify=False)
    embedding = EmbeddingEngine(model, OPTIONS, EmbeddingOptions(n_ctx=256), verify=False)
    try:
        names = [view.name for view in LIVENESS.views()]
        assert "decode" in names and "embed-decode" in names
        assert generation._heartbeat.stall_after == 333.0
        assert embedding._heartbeat.stall_after == 333.0
    finally:
        generation.close()
        embedding.close()
