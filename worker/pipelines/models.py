"""Model names: the model table, aliases (e.g. gpt-4o-mini), which model a pipeline needs,
what each model does (generate or embed), and the models a daemon serves."""

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


def pipeline_models(pipelines: Mapping[str, Pipeline], settings: Settings) -> dict[str, str]:
    """Each pipeline's model, for the pipelines whose model is in the table."""
    found: dict[str, str] = {}
    for name, pipeline in pipelines.items():
        try:
            found[name] = pipeline_model(pipeline, settings)
        except UnknownModel:
            continue
    return found


def served_models(pipelines: Mapping[str, Pipeline], settings: Settings) -> list[str]:
    """The models a daemon with these pipelines serves: the `model` setting's first (if a
    pipeline uses it), then the others by name. With an OpenAI Batch pipeline, whose
    lines may name any model of the table, every entry of the table. Loaded at start-up
    in this order while they fit the memory budget, the others on demand."""
    names = set(pipeline_models(pipelines, settings).values())
    if any(p.reader == "openai-batch" for p in pipelines.values()):
        names |= set(settings.models)
    first = [settings.model] if settings.model in names else []
    return first + sorted(names - set(first))


def startup_model_errors(pipelines: Mapping[str, Pipeline], settings: Settings) -> list[str]:
    """Problems that stop start-up: bad aliases, pipelines that name a model not in the
    table, and pipelines whose fields do not fit their model's kind (a prompt for an
    embedding model, pooling for a generation model). A daemon serves every model its
    pipelines name (within its memory budget)."""
    errors = [
        f"model_aliases.{alias}: {target!r} is not in the model table"
        for alias, target in sorted(settings.model_aliases.items())
        if target not in known_models(settings)
    ]
    for pipeline in pipelines.values():
        try:
            name = pipeline_model(pipeline, settings)
        except UnknownModel as exc:
            errors.append(f"pipeline {pipeline.name}: field model: {exc}")
            continue
        problem = pipeline.kind_problem(name, model_kind(settings, name))
        if problem is not None:
            errors.append(f"pipeline {pipeline.name}: {problem}")
    return errors
