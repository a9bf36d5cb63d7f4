"""Model names: the model table, aliases (e.g. gpt-4o-mini), and which model a pipeline needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from worker.config import DEFAULT_MODEL_NAME, Settings
from worker.pipelines.spec import Pipeline


class UnknownModel(LookupError):
    """A name that is neither in the model table nor an alias of a model in it."""


def known_models(settings: Settings) -> set[str]:
    """Names in the model table (the built-in default is always there)."""
    return {DEFAULT_MODEL_NAME, *settings.models}


def resolve_model_name(settings: Settings, requested: str) -> str:
    """The model-table name for `requested` (itself, or what it is aliased to)."""
    name = settings.model_aliases.get(requested, requested)
    if name not in known_models(settings):
        known = ", ".join(sorted(known_models(settings) | set(settings.model_aliases)))
        raise UnknownModel(f"model {requested!r} is not in the model table (known: {known})")
    return name


def model_kind(settings: Settings, name: str) -> Literal["generate", "embed"]:
    """What model-table entry `name` does (the built-in default generates)."""
    spec = settings.models.get(name)
    return spec.kind if spec is not None else "generate"


def pipeline_model(pipeline: Pipeline, settings: Settings) -> str:
    """The model-table name `pipeline` runs on (its `model`, else the `model` setting).
    Raises UnknownModel."""
    return resolve_model_name(settings, pipeline.model or settings.model)


def embeds(settings: Settings, pipeline: Pipeline) -> bool:
    """Whether `pipeline` turns inputs into vectors (its model has kind = "embed")."""
    try:
        name = pipeline_model(pipeline, settings)
    except UnknownModel:
        return False
    return pipeline.reader != "openai-batch" and model_kind(settings, name) == "embed"


def embed_models_needed(settings: Settings, pipelines: Mapping[str, Pipeline]) -> set[str]:
    """The embed models a daemon must serve: those its pipelines name, and with a batch
    pipeline (whose lines may name any model) every embed entry of the table."""
    table = {name for name, spec in settings.models.items() if spec.kind == "embed"}
    if any(p.reader == "openai-batch" for p in pipelines.values()):
        return table
    needed = set()
    for pipeline in pipelines.values():
        try:
            needed.add(pipeline_model(pipeline, settings))
        except UnknownModel:
            continue
    return table & needed


def startup_model_errors(pipelines: Mapping[str, Pipeline], settings: Settings) -> list[str]:
    """Problems that stop start-up: bad aliases, pipelines that need a model not loaded.

    One daemon serves one model (the `model` setting); a pipeline for another model
    needs a daemon started with that model.
    """
    errors = [
        f"model_aliases.{alias}: {target!r} is not in the model table"
        for alias, target in sorted(settings.model_aliases.items())
        if target not in known_models(settings)
    ]
    for pipeline in pipelines.values():
        requested = pipeline.model or settings.model
        try:
            name = resolve_model_name(settings, requested)
        except UnknownModel as exc:
            errors.append(f"pipeline {pipeline.name}: field model: {exc}")
            continue
        problem = pipeline.kind_problem(name, model_kind(settings, name))
        if problem is not None:
            errors.append(f"pipeline {pipeline.name}: {problem}")
            continue
        if model_kind(settings, name) == "embed":
            continue  # embedding models are served beside the generation model
        if name != settings.model:
            errors.append(
                f"pipeline {pipeline.name}: field model: {requested!r} is not the loaded model "
                f"{settings.model!r}; a daemon serves one model (start one with "
                f"EDGE_WORKER_MODEL={name} for this pipeline, with its own pipelines folder)"
            )
    return errors
