"""The models one daemon serves: their settings, memory estimates, threads, the budget
they share, and the start-up checks (a model that can never fit stops start-up with
the arithmetic)."""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from worker.config import Settings
from worker.errors import ModelError
from worker.llm.backends import gpu_memory
from worker.llm.gguf import GGUFError, read_header
from worker.llm.loading import (
    ModelConfig,
    check_gpu_offload,
    generation_shape,
    model_config,
    open_engine,
    thread_share,
)
from worker.llm.manager import ModelManager, ModelRecord, ModelView, Opener
from worker.llm.memory import (
    UNKNOWN_GPU_MEMORY,
    Budget,
    EngineShape,
    Memory,
    MemoryEstimate,
    estimate,
    host_memory_limit,
    human,
    parse_budget,
)
from worker.llm.model_files import verify_model

# On GPUs, a budget given in bytes (for the host) leaves this share of each GPU.
GPU_SHARE_FOR_BYTE_BUDGETS = 0.9

# The embedding engine's module (issue #19's embeddings part). It provides
# `open_embedder(settings, name)` and, optionally, `memory_shape(settings, config)`.
EMBEDDING_MODULE = "worker.llm.embedding"
EMBEDDERS_MODULE = "worker.llm.embedders"


@dataclass(frozen=True)
class MemoryBudget:
    """What the served models may take together, on the host and on GPUs."""

    host: int
    gpu: int
    host_limit: int
    gpu_limits: tuple[int, ...]
    configured: Budget

    @property
    def memory(self) -> Memory:
        return Memory(self.host, self.gpu)

    def describe(self) -> str:
        text = f"{human(self.host)} ({self.configured.describe()} of {human(self.host_limit)})"
        if self.gpu_limits:
            text += f" and {human(self.gpu)} on GPUs"
        return text


def memory_budget(
    settings: Settings, host_limit: int | None = None, gpu_limits: Iterable[int] | None = None
) -> MemoryBudget:
    """`memory_budget` resolved against this host: RAM or the cgroup limit, and the GPUs."""
    configured = parse_budget(settings.memory_budget)
    host_limit = host_memory_limit() if host_limit is None else host_limit
    gpus = tuple(gpu_memory() if gpu_limits is None else gpu_limits)
    share = configured.share if configured.share is not None else GPU_SHARE_FOR_BYTE_BUDGETS
    return MemoryBudget(
        host=configured.resolve(host_limit),
        # No GPU memory could be read (no GPU, or a build that hides it): GPU parts are
        # not counted (a CPU-only build refuses GPU layers before this matters).
        gpu=int(sum(gpus) * share) if gpus else UNKNOWN_GPU_MEMORY,
        host_limit=host_limit,
        gpu_limits=gpus,
        configured=configured,
    )


def _embedding_hook(name: str) -> Any:
    """An attribute of the embedding engine's modules, or None where they are not built."""
    for module_name in (EMBEDDERS_MODULE, EMBEDDING_MODULE):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found = getattr(module, name, None)
        if found is not None:
            return found
    return None


def shape_for(settings: Settings, config: ModelConfig) -> EngineShape:
    """The memory-relevant cparams of the engine that will serve `config`."""
    if config.kind != "embed":
        return generation_shape(settings, config)
    hook = _embedding_hook("memory_shape")
    if hook is not None:
        shape: EngineShape = hook(settings, config)
        return shape
    # The embedding engine's cparams (worker.llm.embedding): one unified KV stream of
    # n_batch cells, one ubatch of every token, embeddings out for each token.
    n_batch = max(settings.n_batch, config.n_ctx)
    return EngineShape(
        n_ctx=n_batch,
        n_seq=64,
        n_ubatch=n_batch,
        n_batch=n_batch,
        unified=True,
        n_outputs_max=n_batch,
        logits=False,
        n_gpu_layers=config.n_gpu_layers,
    )


def most_resident(memories: Iterable[Memory], budget: Memory) -> int:
    """How many of the models can be loaded at once, at most (the smallest first)."""
    count, used = 0, Memory()
    for memory in sorted(memories, key=lambda m: (m.host, m.gpu)):
        if not (used + memory).fits(budget):
            break
        used = used + memory
        count += 1
    return count


def too_big(name: str, estimated: MemoryEstimate, budget: MemoryBudget) -> str | None:
    """Why model `name` can never fit the budget, with the arithmetic; None if it fits."""
    need = Memory(estimated.host, estimated.gpu)
    if need.fits(budget.memory):
        return None
    return (
        f"model {name!r} needs {need.describe()} ({estimated.describe()}) but "
        f"memory_budget allows {budget.describe()}: lower its n_ctx or parallel, "
        "or raise memory_budget"
    )


def plan_records(
    settings: Settings,
    names: Iterable[str],
    budget: MemoryBudget,
    cores: int | None = None,
    verify: bool = True,
) -> dict[str, ModelRecord]:
    """A record per served model, checked and estimated; ModelError lists every model
    that is missing, damaged, or can never fit."""
    configs: dict[str, ModelConfig] = {}
    estimates: dict[str, MemoryEstimate] = {}
    shapes: dict[str, EngineShape] = {}
    errors: list[str] = []
    for name in dict.fromkeys(names):
        try:
            config = model_config(settings, name)
            check_gpu_offload(settings, config.n_gpu_layers)  # before the arithmetic
            if verify:
                verify_model(config.file)
            header = read_header(config.file.path)
        except ModelError as exc:
            errors.append(str(exc))
            continue
        except (GGUFError, OSError) as exc:
            errors.append(f"model {name!r}: {exc}")
            continue
        if config.kind == "embed" and _embedding_hook("open_embedder") is None:
            errors.append(
                f'model {name!r}: kind = "embed" needs the embedding engine '
                f"({EMBEDDING_MODULE}), which this build does not have"
            )
            continue
        shapes[name] = shape_for(settings, config)
        estimates[name] = estimate(header, shapes[name])
        problem = too_big(name, estimates[name], budget)
        if problem is not None:
            errors.append(problem)
        configs[name] = config
    if errors:
        raise ModelError("\n".join(errors))
    together = most_resident((Memory(e.host, e.gpu) for e in estimates.values()), budget.memory)
    share = thread_share(min(together, len(configs)), cores)
    return {
        name: ModelRecord(
            config=config,
            shape=shapes[name],
            estimate=estimates[name],
            threads=config.n_threads or share,
        )
        for name, config in configs.items()
    }


def default_opener(settings: Settings) -> Opener:
    """Opens a model's engine with its thread share: generation or embeddings. The file
    was verified (sha256) at start-up; a swap does not hash it again."""

    def open_model(config: ModelConfig, threads: int) -> Any:
        config = dataclasses.replace(config, n_threads=threads)
        if config.kind == "embed":
            opener: Callable[..., Any] | None = _embedding_hook("open_embedder")
            if opener is None:  # checked at start-up
                raise ModelError(f"no embedding engine for model {config.name!r}")
            return opener(settings.model_copy(update={"n_threads": threads}), config.name)
        return open_engine(settings, config.file, config=config, verify=False)

    return open_model


def build_manager(
    settings: Settings,
    names: Iterable[str],
    on_change: Callable[[], None] = lambda: None,
    budget: MemoryBudget | None = None,
    opener: Opener | None = None,
) -> tuple[ModelManager, MemoryBudget]:
    """The manager of the models `names`, checked against the budget (nothing loaded)."""
    budget = budget or memory_budget(settings)
    records = plan_records(settings, names, budget, os.cpu_count())
    return ModelManager(records, opener or default_opener(settings), on_change), budget


def preload(manager: ModelManager, budget: Memory) -> list[str]:
    """Load the served models at start-up, in order, while they fit the budget together;
    the others load on demand. A model that fails to load stops start-up (ModelError)."""
    loaded: list[str] = []
    used = Memory()
    for view in manager.views():
        if not (used + view.memory).fits(budget):
            continue
        manager.load(view.name)
        used = used + manager_view(manager, view.name).memory
        loaded.append(view.name)
    return loaded


def manager_view(manager: ModelManager, name: str) -> ModelView:
    """One model's view."""
    return next(v for v in manager.views() if v.name == name)


def model_rows(
    settings: Settings, served: set[str], budget: MemoryBudget
) -> list[dict[str, object]]:
    """Every model in the table (the built-in default too), with its settings in effect and
    its estimate from the GGUF header (or why there is none), for `model list`."""
    from worker.config import DEFAULT_MODEL_NAME

    rows: list[dict[str, object]] = []
    for name in sorted({DEFAULT_MODEL_NAME, *settings.models, *served}):
        row: dict[str, object] = {"name": name, "served": name in served, "estimate": None}
        try:
            config = model_config(settings, name)
            row.update(
                kind=config.kind,
                path=str(config.file.path),
                n_ctx=config.n_ctx,
                parallel=config.parallel,
                n_gpu_layers=config.n_gpu_layers,
            )
            estimated = estimate(read_header(config.file.path), shape_for(settings, config))
        except (ModelError, GGUFError, OSError) as exc:
            row.setdefault("kind", "?")
            row.setdefault("n_ctx", "")
            row.setdefault("parallel", "")
            row["error"] = str(exc)
            rows.append(row)
            continue
        row.update(
            estimate=estimated.total,
            estimate_detail=estimated.describe(),
            fits=too_big(name, estimated, budget) is None,
            error=None,
        )
        rows.append(row)
    return rows
