"""`edge-worker pipelines validate` and `pipelines try`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from worker.engine import ModelError
from worker.inputs import InputError
from worker.pipelines import PipelineError


def _cli() -> Any:
    from worker import cli

    return cli


def validate() -> None:
    """Check every pipeline file (fields, templates, JSON Schemas, models); exit 2 if any fails."""
    from worker.model_names import startup_model_errors
    from worker.pipelines import load_pipelines

    cli = _cli()
    settings = cli._settings()
    try:
        pipelines = load_pipelines(settings.pipelines_dir)
    except PipelineError as exc:
        raise cli._fatal(f"invalid pipeline:\n{exc}", 2) from None
    errors = startup_model_errors(pipelines, settings)
    if errors:
        raise cli._fatal("invalid pipeline:\n" + "\n".join(errors), 2)
    table = Table("pipeline", "mode", "reader", "output", "schema", "long input", "model")
    for p in pipelines.values():
        table.add_row(
            p.name, p.mode, p.reader, p.output_format, "yes" if p.json_schema else "",
            p.long_input, p.model or settings.model,
        )  # fmt: skip
    cli.console.print(table)
    cli.console.print(f"{len(pipelines)} pipeline(s) in {settings.pipelines_dir} are valid")


def try_pipeline(
    pipeline_name: Annotated[str, typer.Argument(metavar="PIPELINE")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
) -> None:
    """Render the prompt for FILE, run one inference and print the result. Writes nothing.

    For a file with records (CSV, JSON Lines) or an OpenAI Batch file, the first valid
    record or request is tried.
    """
    from worker.pipelines import load_pipelines

    cli = _cli()
    settings = cli._settings()
    try:
        pipeline = load_pipelines(settings.pipelines_dir).get(pipeline_name)
    except PipelineError as exc:
        raise cli._fatal(f"invalid pipeline:\n{exc}", 2) from None
    if pipeline is None:
        raise cli._fatal(f"no pipeline {pipeline_name!r} in {settings.pipelines_dir}", 2)
    try:
        _try(cli, settings, pipeline, file)
    except ModelError as exc:
        raise cli._fatal(str(exc), 3) from None
    except InputError as exc:
        raise cli._fatal(str(exc), 1) from None


def _try(cli: Any, settings: Any, pipeline: Any, file: Path) -> None:
    import json

    from worker.chat import chat_template_for
    from worker.daemon import open_engine
    from worker.engine.model_files import resolve_model
    from worker.inference import PipelineRun, generate
    from worker.readers import Records, read_input, reader_for, template_variables

    data = file.read_bytes()
    kind = reader_for(file.name, pipeline.reader)
    if kind != "openai-batch":
        document = read_input(data, kind)
        if isinstance(document, Records):
            first = next((r for r in document.records if r.fields is not None), None)
            if first is None:
                raise InputError("no readable record in the file")
            cli.err.print(f"trying record at line {first.line}", highlight=False)
            text, variables = template_variables(first.fields or {})
        else:
            text, variables = document.text, dict(document.variables)
    engine = open_engine(settings, resolve_model(settings), parallel=1)
    spec = settings.models.get(settings.model)
    chat = chat_template_for(engine, spec.chat_template if spec else None)
    if kind == "openai-batch":
        from worker.batch.lines import read_batch
        from worker.batch.request import parse_request, prompt_and_generation

        line = next((x for x in read_batch(data, lambda n: n) if x.request), None)
        if line is None or line.request is None:
            raise InputError("no valid request line in the batch file")
        request = parse_request(str(line.request["url"]), line.request["body"])
        prompt, generation = prompt_and_generation(request, pipeline.generation, chat)
        cli.err.rule(f"prompt (line {line.line}, {engine.count_tokens(prompt)} tokens)")
        cli.err.print(prompt, markup=False, highlight=False)
        answer = generate(engine, prompt, generation, lambda: False)
    else:
        run = PipelineRun(engine, pipeline, lambda: chat)
        prompt = run.prompt(text, variables)
        cli.err.rule(f"prompt ({engine.count_tokens(prompt)} tokens)")
        cli.err.print(prompt, markup=False, highlight=False)
        answer = run.run(text, variables, lambda: False)
    cli.err.rule("result")
    print(answer.text)
    cli.err.print(
        json.dumps({"prompt_tokens": answer.prompt_tokens, "calls": answer.calls,
                    "completion_tokens": answer.completion_tokens}),
        highlight=False,
    )  # fmt: skip
