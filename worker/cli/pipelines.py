"""`edge-worker pipelines ...`: list, validate and try the pipelines."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from worker.batch.embeddings import EmbeddingRequest
from worker.batch.lines import finish_lines
from worker.batch.request import CHAT, parse_line, prompt_and_generation
from worker.cli import common
from worker.config import Settings
from worker.errors import InputError, ModelError
from worker.io.readers import (
    ReaderName,
    Records,
    limits_of,
    reader_for,
    template_variables,
)
from worker.llm.chat import chat_template_for
from worker.llm.engine import Engine
from worker.pipelines.inference import Answer, PipelineRun, generate
from worker.pipelines.spec import Pipeline, PipelineError
from worker.sandbox import Sandbox, SandboxLimits
from worker.sandbox.parsing import Parsing

pipelines_app = typer.Typer(help="Pipelines from the pipelines folder.", no_args_is_help=True)


@pipelines_app.command("list")
def pipelines_list() -> None:
    """The pipelines and what they do."""
    settings = common.settings()
    table = Table("name", "output", "max_tokens", "model", "description")
    for p in common.load_pipeline_set(settings).values():
        table.add_row(
            Text(p.name),
            p.output_format,
            str(p.generation.max_tokens),
            Text(p.model or settings.model),
            Text(p.description),
        )
    common.console.print(table)


@pipelines_app.command("validate")
def validate() -> None:
    """Check every pipeline file (fields, templates, JSON Schemas, models); exit 2 if any fails."""
    from worker.pipelines.models import startup_model_errors
    from worker.pipelines.spec import load_pipelines

    settings = common.settings()
    try:
        pipelines = load_pipelines(settings.pipelines_dir)
    except PipelineError as exc:
        raise common.fatal(f"invalid pipeline:\n{exc}", 2) from None
    errors = startup_model_errors(pipelines, settings)
    if errors:
        raise common.fatal("invalid pipeline:\n" + "\n".join(errors), 2)
    table = Table("pipeline", "mode", "reader", "output", "schema", "long input", "model")
    for p in pipelines.values():
        table.add_row(
            Text(p.name),
            p.mode,
            p.reader,
            p.output_format,
            "yes" if p.json_schema else "",
            p.long_input,
            Text(p.model or settings.model),
        )
    common.console.print(table)
    common.console.print(
        f"{len(pipelines)} pipeline(s) in {settings.pipelines_dir} are valid", markup=False
    )


@pipelines_app.command("try")
def try_pipeline(
    pipeline_name: Annotated[str, typer.Argument(metavar="PIPELINE")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
) -> None:
    """Render the prompt for FILE, run one inference and print the result. Writes nothing.

    For a file with records (CSV, JSON Lines) or an OpenAI Batch file, the first valid
    record or request is tried.
    """
    from worker.pipelines.spec import load_pipelines

    settings = common.settings()
    try:
        pipeline = load_pipelines(settings.pipelines_dir).get(pipeline_name)
    except PipelineError as exc:
        raise common.fatal(f"invalid pipeline:\n{exc}", 2) from None
    if pipeline is None:
        raise common.fatal(f"no pipeline {pipeline_name!r} in {settings.pipelines_dir}", 2)
    try:
        _try(settings, pipeline, file)
    except ModelError as exc:
        raise common.fatal(str(exc), 3) from None
    except InputError as exc:
        raise common.fatal(str(exc), 1) from None


def _open_engine(settings: Settings) -> Engine:
    from worker.llm.loading import open_engine
    from worker.llm.model_files import resolve_model

    return open_engine(settings, resolve_model(settings), parallel=1)


def _try(
    settings: Settings,
    pipeline: Pipeline,
    file: Path,
    open_engine: Callable[[Settings], Engine] = _open_engine,
) -> None:
    """One inference on FILE's first input with `pipeline`, as the daemon would run it (on
    the pipeline's model)."""
    from worker.pipelines.models import UnknownModel, pipeline_model

    try:
        settings = settings.model_copy(update={"model": pipeline_model(pipeline, settings)})
    except UnknownModel as exc:
        raise InputError(f"pipeline {pipeline.name}: {exc}") from None
    data = file.read_bytes()
    kind = reader_for(file.name, pipeline.reader)
    engine = open_engine(settings)
    # The input is parsed as the daemon parses it: in a sandbox child, under its limits.
    limits = replace(SandboxLimits.from_settings(settings), processes=1)
    try:
        with Sandbox(limits) as sandbox:
            answer = _answer(settings, pipeline, engine, data, kind, Parsing(sandbox))
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    common.err.rule("result")
    print(answer.text)
    counts = {
        "prompt_tokens": answer.prompt_tokens,
        "calls": answer.calls,
        "completion_tokens": answer.completion_tokens,
    }
    common.err.print(json.dumps(counts), highlight=False, markup=False)


def _answer(
    settings: Settings,
    pipeline: Pipeline,
    engine: Engine,
    data: bytes,
    kind: ReaderName,
    parsing: Parsing,
) -> Answer:
    spec = settings.models.get(settings.model)
    chat = chat_template_for(engine, spec.chat_template if spec else None)
    if kind == "openai-batch":
        lines = finish_lines(parsing.check_lines(data, None), lambda n: n)
        line = next((x for x in lines if x.request), None)
        if line is None or line.request is None:
            raise InputError("no valid request line in the batch file")
        request = parse_line(str(line.request["url"]), line.request["body"], check_schema=False)
        if isinstance(request, EmbeddingRequest):
            raise InputError("`pipelines try` runs chat and completion lines, not embeddings")
        if request.schema is not None:  # checked and compiled in the sandbox
            max_tokens = request.generation.get("max_tokens", pipeline.generation.max_tokens)
            parsing.grammar(dict(request.schema), max_tokens)
        prompt, generation = prompt_and_generation(request, pipeline.generation, chat)
        common.err.rule(f"prompt (line {line.line}, {engine.count_tokens(prompt)} tokens)")
        common.err.print(prompt, markup=False, highlight=False)
        # As the daemon answers it: only chat completions are stripped.
        strip = request.endpoint == CHAT
        return generate(
            engine, prompt, generation, lambda: False, strip=strip, validate=parsing.validate
        )
    document = parsing.read_input(data, kind, limits_of(settings))
    if isinstance(document, Records):
        first = next((r for r in document.records if r.fields is not None), None)
        if first is None:
            raise InputError("no readable record in the file")
        common.err.print(f"trying record at line {first.line}", highlight=False)
        text, variables = template_variables(first.fields or {})
    else:
        text, variables = document.text, dict(document.variables)
    run = PipelineRun(engine, pipeline, lambda: chat, parsing.validate)
    prompt = run.prompt(text, variables)
    common.err.rule(f"prompt ({engine.count_tokens(prompt)} tokens)")
    common.err.print(prompt, markup=False, highlight=False)
    return run.run(text, variables, lambda: False)
