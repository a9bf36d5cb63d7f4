"""The embedding engines a daemon serves, opened from the model table's `kind = "embed"`
entries, by model name.

Interim: every embed model a pipeline can reach is loaded at start-up (so a missing or
corrupt one stops start-up, as for the generation model) and stays resident. The model
manager of issue #19 (memory budget, loading on demand) takes this over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from worker.config import ModelSpec, Settings
from worker.errors import InputError, ModelError
from worker.llm.embedding import Embedder, EmbeddingEngine, EmbeddingOptions
from worker.llm.loading import check_gpu_offload, engine_options
from worker.llm.model_files import resolve_model


class ModelNotServed(InputError):
    """A model name this daemon has no embedding engine for (loaded at start-up only)."""


def embedding_options(settings: Settings, spec: ModelSpec) -> EmbeddingOptions:
    """The embedding context for a model entry: the daemon's n_ctx and n_batch, the
    entry's pooling and normalization."""
    n_ctx = getattr(spec, "n_ctx", None) or settings.n_ctx  # per-model n_ctx, once it exists
    return EmbeddingOptions(
        n_ctx=n_ctx,
        n_batch=max(settings.n_batch, n_ctx),
        pooling=spec.pooling,
        normalize=spec.normalize,
    )


def open_embedder(settings: Settings, name: str) -> EmbeddingEngine:
    """Load model `name` (a `kind = "embed"` entry) as an embedding engine."""
    spec = settings.models.get(name)
    if spec is None or spec.kind != "embed":
        raise ModelError(f'model {name!r} is not an embedding model (kind = "embed")')
    check_gpu_offload(settings)
    return EmbeddingEngine(
        resolve_model(settings, name), engine_options(settings), embedding_options(settings, spec)
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
                f"embedding model {name!r} is not loaded by this daemon (embedding models: "
                f"{served}); embedding models load at start-up: restart the daemon"
            )
        return engine

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
