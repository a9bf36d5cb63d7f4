"""Model names: the model table, aliases (e.g. gpt-4o-mini), and which model a pipeline needs."""

from __future__ import annotations

from collections.abc import Mapping

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
        if name != settings.model:
            errors.append(
                f"pipeline {pipeline.name}: field model: {requested!r} is not the loaded model "
                f"{settings.model!r}; a daemon serves one model (start one with "
                f"EDGE_WORKER_MODEL={name} for this pipeline, with its own pipelines folder)"
            )
    return errors
