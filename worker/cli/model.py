"""`edge-worker model ...`: prepare the default model, describe the build and the loaded one."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from worker.cli import common
from worker.errors import ModelError

model_app = typer.Typer(help="The model table and its files.", no_args_is_help=True)


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


@model_app.command("list")
def model_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document with stable keys.")
    ] = False,
) -> None:
    """The model table: what each model is, what it is estimated to take (from its GGUF
    header, nothing loaded), and, from the daemons of this data folder, its state, the
    memory it really took, its loads and its queue."""
    from worker.io.instance import instance_id
    from worker.llm.memory import gpu_figure, human
    from worker.llm.serving import memory_budget, model_rows
    from worker.ops.fleet import daemon_of
    from worker.pipelines.models import pipeline_models
    from worker.pipelines.spec import PipelineError, load_pipelines
    from worker.queue.jobs import utcnow
    from worker.queue.outage import DatabaseUnavailable

    settings = common.settings()
    try:
        pipelines = load_pipelines(settings.pipelines_dir)
    except PipelineError as exc:
        raise common.fatal(f"invalid pipeline:\n{exc}", 2) from None
    by_pipeline = pipeline_models(pipelines, settings)
    budget = memory_budget(settings)
    rows = model_rows(settings, set(by_pipeline.values()), budget)
    live: dict[str, dict[str, object]] = {}
    counts: dict[tuple[str, str], int] = {}
    try:
        store = common.open_store(settings)
        me = instance_id(settings.data_dir)
        now = utcnow()
        counts = store.counts()
        for worker in store.list_workers():
            daemon = daemon_of(worker, now, settings.lease_seconds)
            if daemon.live and daemon.instance == me:
                live.update({str(m.get("name")): m for m in daemon.models})
    except DatabaseUnavailable as exc:
        common.err.print(f"the job table cannot be read: {exc}", markup=False)
    for row in rows:
        state = live.get(str(row["name"]), {})
        served = sorted(p for p, m in by_pipeline.items() if m == row["name"])
        row.update(
            pipelines=served,
            state=state.get("state", "not running" if row["served"] else "not served"),
            measured=state.get("measured"),
            loads=state.get("loads", 0),
            in_hand=state.get("in_hand", 0),
            queued=sum(counts.get((p, "queued"), 0) for p in served),
        )
    if as_json:
        gpu = gpu_figure(budget.gpu)
        common.write_json({"budget": budget.host, "budget_gpu": gpu, "models": rows})
        return
    table = Table(
        "model",
        "kind",
        "n_ctx",
        "parallel",
        "state",
        "estimated",
        "measured",
        "loads",
        "queued",
        "pipelines",
        title=f"memory budget {budget.describe()}",
    )
    for row in rows:
        measured = row["measured"]
        table.add_row(
            Text(str(row["name"])),
            str(row["kind"]),
            str(row["n_ctx"]),
            str(row["parallel"]),
            Text(str(row["state"])),
            human(int(str(row["estimate"])))
            if row["estimate"] is not None
            else Text(str(row["error"])),
            human(int(str(measured))) if measured is not None else "",
            str(row["loads"]),
            str(row["queued"]),
            Text(", ".join(row["pipelines"])),  # type: ignore[arg-type]
        )
    common.console.print(table)
