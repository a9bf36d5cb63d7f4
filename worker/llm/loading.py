"""Opening llama.cpp engines: a model-table entry's settings (its own, else the global
ones), the memory shape they give, and the GPU check."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from worker.config import Settings
from worker.errors import ModelError
from worker.llm.backends import build_info, offload_error
from worker.llm.batched import PREFIX_CACHE_SLOTS, BatchedEngine, BatchOptions
from worker.llm.engine import EngineOptions, decode_stall_seconds
from worker.llm.memory import EngineShape
from worker.llm.model_files import ModelFile, resolve_model
from worker.llm.repack_probe import decide_repack


@dataclass(frozen=True)
class ModelConfig:
    """One model as the daemon serves it: its file and its settings in effect."""

    name: str
    file: ModelFile
    kind: str = "generate"  # "generate" or "embed"
    n_ctx: int = 2048
    parallel: int = 8
    n_gpu_layers: int = 0
    n_threads: int | None = None  # None: the daemon's share of the cores
    chat_template: str | None = None
    pooling: str | None = None
    normalize: bool = True


def model_config(settings: Settings, name: str | None = None) -> ModelConfig:
    """Model `name` (default: the `model` setting) with its settings in effect: the entry's
    own, else the global ones. Raises ModelError for a name not in the table."""
    file = resolve_model(settings, name)
    spec = settings.models.get(file.name)

    def own(field: str) -> Any:
        value = getattr(spec, field) if spec is not None else None
        return getattr(settings, field) if value is None else value

    return ModelConfig(
        name=file.name,
        file=file,
        kind=spec.kind if spec is not None else "generate",
        n_ctx=own("n_ctx"),
        parallel=own("parallel"),
        n_gpu_layers=own("n_gpu_layers"),
        n_threads=own("n_threads"),
        chat_template=spec.chat_template if spec is not None else None,
        pooling=spec.pooling if spec is not None else None,
        normalize=spec.normalize if spec is not None else True,
    )


def engine_options(settings: Settings, config: ModelConfig | None = None) -> EngineOptions:
    """llama.cpp's options for `config` (default: the `model` setting's entry)."""
    config = config or model_config(settings)
    return EngineOptions(
        n_ctx=config.n_ctx,
        n_threads=config.n_threads,
        n_gpu_layers=config.n_gpu_layers,
        seed=settings.seed,
        decode_stall_seconds=decode_stall_seconds(settings.stall_seconds),
    )


def batch_options(settings: Settings, parallel: int) -> BatchOptions:
    return BatchOptions(
        parallel=parallel,
        n_batch=max(settings.n_batch, parallel),
        n_ubatch=settings.n_ubatch,
        n_threads_batch=settings.n_threads_batch,
        batch_invariant=settings.batch_invariant,
        repack_weights=bool(settings.repack_weights),  # unset: open_engine's probe decides
    )


def generation_shape(settings: Settings, config: ModelConfig) -> EngineShape:
    """The memory-relevant cparams `BatchedEngine` sets for `config` (see its __init__):
    one KV stream per slot and per prefix-cache sequence, full-size sliding windows."""
    batch = batch_options(settings, config.parallel)
    cache = PREFIX_CACHE_SLOTS if batch.prefix_cache else 0
    return EngineShape(
        n_ctx=config.n_ctx,
        n_seq=config.parallel + cache,
        n_ubatch=min(batch.n_ubatch, batch.n_batch),
        n_batch=batch.n_batch,
        unified=False,
        swa_full=True,
        n_gpu_layers=config.n_gpu_layers,
    )


def check_gpu_offload(settings: Settings, n_gpu_layers: int | None = None) -> None:
    """Raise ModelError if `n_gpu_layers` (default: the setting) asks for GPU layers that
    this build cannot offload."""
    if n_gpu_layers is None:
        n_gpu_layers = settings.n_gpu_layers
    if n_gpu_layers == 0:
        return
    info = build_info()
    message = offload_error(n_gpu_layers, info.gpu_offload, info.backends)
    if message is not None:
        raise ModelError(message)


def thread_share(resident: int, cores: int | None = None) -> int:
    """Threads for each engine when `resident` engines may decode at once: the cores split
    between them, so their decode threads never oversubscribe the cores (measured faster
    on 2 cores than one process-wide decode lock: notes/models.md)."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, resident))


def open_engine(
    settings: Settings,
    model: ModelFile,
    parallel: int | None = None,
    config: ModelConfig | None = None,
    verify: bool = True,
) -> BatchedEngine:
    """Load a generation engine for `config` (default: the entry of `model`).

    Raises ModelError before loading anything if `n_gpu_layers` asks for a GPU that
    this build of llama.cpp cannot use (it would run on the CPU without a word).
    """
    if config is None:
        config = dataclasses.replace(model_config(settings, model.name), file=model)
    check_gpu_offload(settings, config.n_gpu_layers)
    batch = batch_options(settings, parallel or config.parallel)
    batch = dataclasses.replace(
        batch,
        repack_weights=decide_repack(settings.repack_weights, model.path, batch.batch_invariant),
    )
    return BatchedEngine(model, engine_options(settings, config), batch, verify=verify)
