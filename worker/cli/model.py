"""`edge-worker model ...`: prepare the default model, describe the build and the loaded one."""

from __future__ import annotations

import os

import typer
from rich.table import Table
from rich.text import Text

from worker.cli import common
from worker.errors import ModelError

model_app = typer.Typer(help="The model file.", no_args_is_help=True)


@model_app.command("prepare")
def model_prepare() -> None:
    """Assemble the built-in Gemma 3 270M GGUF into the models folder (no network)."""
    from worker.llm.model_files import prepare_default_model

    path = prepare_default_model(common.settings())
    common.console.print(f"model ready: {path}", markup=False)


def _build_rows() -> dict[str, str]:
    """What this llama.cpp build can run on; shown even when the model cannot load."""
    from worker.llm.backends import build_info

    info = build_info()
    rows = {
        "llama-cpp-python": info.version,
        "backends": ", ".join(info.backends) or "?",
        "GPU offload": "yes" if info.gpu_offload else "no (CPU-only build)",
    }
    for number, device in enumerate(info.devices):
        rows[f"device {number}"] = f"{device.kind} {device.name}: {device.description}"
    return rows


def _print_rows(rows: dict[str, str]) -> None:
    table = Table("", "", show_header=False)
    for key, value in rows.items():
        table.add_row(key, Text(value), style=None)
    common.console.print(table, markup=False)


@model_app.command("info")
def model_info() -> None:
    """The llama.cpp build (backends, devices, GPU offload), then the model: path, size,
    sha256, architecture and trained context length."""
    from worker.llm.loading import engine_options, open_engine
    from worker.llm.model_files import resolve_model, sha256_file

    settings = common.settings()
    build = _build_rows()
    try:
        model = resolve_model(settings)
        engine = open_engine(settings, model)
    except ModelError as exc:
        _print_rows(build)
        raise common.fatal(str(exc), 3) from None
    meta = engine.metadata
    arch = meta.get("general.architecture", "?")
    options = engine_options(settings)
    rows = {
        **build,
        "name": model.name,
        "path": str(model.path),
        "size": f"{model.path.stat().st_size:,} bytes",
        "sha256": sha256_file(model.path),
        "architecture": arch,
        "trained context length": meta.get(f"{arch}.context_length", "?"),
        "n_ctx (in effect)": str(options.n_ctx),
        "n_threads (in effect)": str(options.n_threads or os.cpu_count()),
        "n_gpu_layers": str(options.n_gpu_layers),
        "parallel (slots)": str(engine.parallel),
        "n_batch / n_ubatch": f"{settings.n_batch} / {settings.n_ubatch}",
        "n_threads_batch": str(settings.n_threads_batch or options.n_threads or os.cpu_count()),
        "batch_invariant": str(settings.batch_invariant).lower(),
        "KV cache (all slots)": f"{engine.n_ctx * engine.parallel} tokens",
        "load time": f"{engine.load_seconds:.2f} s",
    }
    engine.close()
    _print_rows(rows)
