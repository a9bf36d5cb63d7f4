"""Opening the llama.cpp engine with the settings' model, threads and batching parameters."""

from __future__ import annotations

from worker.config import Settings
from worker.errors import ModelError
from worker.llm.backends import build_info, offload_error
from worker.llm.batched import BatchedEngine, BatchOptions
from worker.llm.engine import EngineOptions
from worker.llm.model_files import ModelFile
from worker.llm.repack_probe import decide_repack


def engine_options(settings: Settings) -> EngineOptions:
    return EngineOptions(
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_gpu_layers=settings.n_gpu_layers,
        seed=settings.seed,
    )


def check_gpu_offload(settings: Settings) -> None:
    """Raise ModelError if the settings ask for GPU layers that this build cannot offload."""
    if settings.n_gpu_layers == 0:
        return
    info = build_info()
    message = offload_error(settings.n_gpu_layers, info.gpu_offload, info.backends)
    if message is not None:
        raise ModelError(message)


def open_engine(settings: Settings, model: ModelFile, parallel: int | None = None) -> BatchedEngine:
    """Load `model` with the settings' llama.cpp and batching parameters.

    Raises ModelError before loading anything if `n_gpu_layers` asks for a GPU that
    this build of llama.cpp cannot use (it would run on the CPU without a word).
    """
    check_gpu_offload(settings)
    batch = BatchOptions(
        parallel=parallel or settings.parallel,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        n_threads_batch=settings.n_threads_batch,
        batch_invariant=settings.batch_invariant,
        repack_weights=decide_repack(settings.repack_weights, model.path, settings.batch_invariant),
    )
    return BatchedEngine(model, engine_options(settings), batch)
