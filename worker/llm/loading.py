"""Opening the llama.cpp engine with the settings' model, threads and batching parameters."""

from __future__ import annotations

from worker.config import Settings
from worker.llm.batched import BatchedEngine, BatchOptions
from worker.llm.engine import EngineOptions
from worker.llm.model_files import ModelFile


def engine_options(settings: Settings) -> EngineOptions:
    return EngineOptions(
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        seed=settings.seed,
    )


def open_engine(settings: Settings, model: ModelFile, parallel: int | None = None) -> BatchedEngine:
    """Load `model` with the settings' llama.cpp and batching parameters."""
    batch = BatchOptions(
        parallel=parallel or settings.parallel,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        n_threads_batch=settings.n_threads_batch,
        batch_invariant=settings.batch_invariant,
        repack_weights=settings.repack_weights,
    )
    return BatchedEngine(model, engine_options(settings), batch)
