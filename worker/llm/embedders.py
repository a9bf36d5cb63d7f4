"""Embedding engines, opened from the model table's `kind = "embed"` entries, by model name.

`open_embedder(settings, name)` and `memory_shape(settings, config)` are the hooks the
model manager (`worker.llm.serving`) calls: a daemon serves embedding models like
generation models, loaded on demand within the memory budget, each with its share of
the cores. `Embedders` is a fixed set of engines by name for a runner without a model
manager (tests, tools): `Embedders.open` loads each named model and keeps it resident.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from worker.config import ModelSpec, Settings
from worker.errors import InputError, ModelError
from worker.llm.backends import build_info, offload_error
from worker.llm.embedding import Embedder, EmbeddingEngine, EmbeddingOptions
from worker.llm.engine import EngineOptions, decode_stall_seconds
from worker.llm.model_files import resolve_model


class ModelNotServed(InputError):
    """A model name an `Embedders` set (a runner without a model manager) has no engine for."""


def embedding_options(settings: Settings, spec: ModelSpec) -> EmbeddingOptions:
    """The embedding context for a model entry: the daemon's n_ctx and n_batch, the
    entry's pooling and normalization."""
    n_ctx = _own(spec, settings, "n_ctx")
    return EmbeddingOptions(
        n_ctx=n_ctx,
        n_batch=max(settings.n_batch, n_ctx),
        pooling=spec.pooling,
        normalize=spec.normalize,
    )


def _own(spec: ModelSpec, settings: Settings, field: str) -> Any:
    """The entry's own value of a llama.cpp setting (when the table has one), else the
    global setting."""
    value = getattr(spec, field, None)
    return getattr(settings, field) if value is None else value


def open_embedder(settings: Settings, name: str) -> EmbeddingEngine:
    """Load model `name` (a `kind = "embed"` entry) as an embedding engine.

    The model manager calls this with `settings.n_threads` set to the engine's share of
    the cores."""
    spec = settings.models.get(name)
    if spec is None or spec.kind != "embed":
        raise ModelError(f'model {name!r} is not an embedding model (kind = "embed")')
    n_gpu_layers = _own(spec, settings, "n_gpu_layers")
    if n_gpu_layers:
        message = offload_error(n_gpu_layers, build_info().gpu_offload, build_info().backends)
        if message is not None:
            raise ModelError(message)
    options = EngineOptions(
        n_ctx=_own(spec, settings, "n_ctx"),
        n_threads=settings.n_threads or getattr(spec, "n_threads", None),
        n_gpu_layers=n_gpu_layers,
        seed=settings.seed,
        decode_stall_seconds=decode_stall_seconds(settings.stall_seconds),
    )
    return EmbeddingEngine(
        resolve_model(settings, name), options, embedding_options(settings, spec)
    )


def memory_shape(settings: Settings, config: Any) -> Any:
    """The cparams of the embedding engine that decide its memory, as the model
    manager's estimate takes them (`worker.llm.memory.EngineShape`, of the models
    branch; `config` is its `ModelConfig`).

    One unified KV stream of n_batch cells and one micro-batch of n_batch tokens. In
    embeddings mode llama.cpp outputs every token of a call, and reserves logits for
    each (its output buffer always has them): n_batch output rows, told as n_seq.
    """
    memory = importlib.import_module("worker.llm.memory")
    n_batch = max(settings.n_batch, int(config.n_ctx))
    return memory.EngineShape(
        n_ctx=n_batch,
        n_seq=n_batch,
        n_ubatch=n_batch,
        n_batch=n_batch,
        unified=True,
        swa_full=True,
        n_outputs_max=n_batch,
        logits=True,
        n_gpu_layers=int(config.n_gpu_layers),
    )


class Embedders:
    """The daemon's embedding engines by model name; `close()` frees them all."""

    def __init__(self, engines: Mapping[str, Embedder] | None = None) -> None:
        self._engines: dict[str, Embedder] = dict(engines or {})

    @classmethod
    def open(cls, settings: Settings, names: Iterable[str]) -> Embedders:
        """Load each named embed model; on a failure, free what was loaded and raise."""
        opened = cls()
        try:
            for name in sorted(set(names)):
                opened._engines[name] = open_embedder(settings, name)
        except BaseException:
            opened.close()
            raise
        return opened

    def names(self) -> list[str]:
        return sorted(self._engines)

    def engines(self) -> dict[str, Embedder]:
        return dict(self._engines)

    def get(self, name: str) -> Embedder:
        """The engine of model `name`; ModelNotServed if this daemon has none."""
        engine = self._engines.get(name)
        if engine is None:
            served = ", ".join(self.names()) or "none"
            raise ModelNotServed(
                f"embedding model {name!r} is not one of this runner's embedding models ({served})"
            )
        return engine

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
