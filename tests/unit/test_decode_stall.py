"""The decode heartbeat's bound follows stall_seconds: never below 120 s (a decode call of
a big batch on a slow CPU), never below the setting (an operator who raised it for a slow
box is not overruled by the engines). No model is loaded: the engines are recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.config import load_settings
from worker.llm import embedders, loading
from worker.llm.engine import EngineOptions, decode_stall_seconds
from worker.llm.model_files import resolve_model


class Recorded:
    """Stands in for an engine class: keeps the options it was built with."""

    def __init__(self, model: Any, options: EngineOptions, *_: Any, **__: Any) -> None:
        self.options = options


@pytest.mark.parametrize(("stall", "bound"), [(30.0, 120.0), (120.0, 120.0), (600.0, 600.0)])
def test_the_decode_bound_is_the_setting_with_a_floor(stall: float, bound: float) -> None:
    assert decode_stall_seconds(stall) == bound
    assert loading.engine_options(load_settings(stall_seconds=stall)).decode_stall_seconds == bound


def test_both_engines_are_built_with_the_bound_of_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "BatchedEngine", Recorded)
    monkeypatch.setattr(loading, "decide_repack", lambda *_: False)
    monkeypatch.setattr(embedders, "EmbeddingEngine", Recorded)
    settings = load_settings(
        stall_seconds=900,
        models={"emb": {"path": str(tmp_path / "e.gguf"), "kind": "embed"}},
    )
    generation: Any = loading.open_engine(settings, resolve_model(settings))
    embedding: Any = embedders.open_embedder(settings, "emb")
    assert generation.options.decode_stall_seconds == 900
    assert embedding.options.decode_stall_seconds == 900
