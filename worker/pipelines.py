"""Pipeline specs from `pipelines/*.toml`, validated at start-up; errors name file and field."""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path
from typing import Literal

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.schedule_time import cron_trigger, in_window, parse_window, zone

_JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
PIPELINE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class PipelineError(Exception):
    """A pipeline file is invalid; the message names the file and the field."""


class Generation(BaseModel):
    """Sampling parameters for one completion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(default=256, ge=1, le=32768)
    temperature: float = Field(default=0.0, ge=0, le=5)
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0, le=1)
    repeat_penalty: float = Field(default=1.1, gt=0)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    stop: tuple[str, ...] = ()


class Pipeline(BaseModel):
    """What to do with one kind of input: prompt, generation parameters, output format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=PIPELINE_NAME)
    description: str = ""
    mode: Literal["completion"] = "completion"
    model: str | None = None
    prompt: str = Field(min_length=1, description="Jinja2 template; the input is `{{ input }}`")
    output_format: Literal["text", "markdown", "json"] = "text"
    # Start of the answer, written after the prompt so a base model continues it
    # (e.g. "-" to begin a bullet list). It is part of the result.
    answer_prefix: str = ""
    generation: Generation = Generation()

    # Schedules (README, "Schedules"): at each cron fire, enqueue the files matching
    # `sweep` that are new or changed, and/or (inbox_mode "scheduled") the waiting inbox.
    timezone: str = Field(default="UTC", description="IANA time zone of schedule and window")
    schedule: str | None = Field(default=None, description="cron: 5 fields, or 6 (seconds first)")
    sweep: tuple[str, ...] = Field(default=(), description="globs, absolute or under data_dir")
    inbox_mode: Literal["continuous", "scheduled"] = "continuous"
    window: str | None = Field(default=None, description="'HH:MM-HH:MM': when jobs are claimed")
    misfire_grace: float = Field(default=3600, ge=0, description="seconds; catch-up limit")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value

    @field_validator("schedule")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        if value is not None:
            cron_trigger(value)
        return value

    @field_validator("window")
    @classmethod
    def _window_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_window(value)
        return value

    @field_validator("sweep")
    @classmethod
    def _patterns_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("an empty glob pattern would match nothing")
        return value

    def open_at(self, now: datetime) -> bool:
        """Whether jobs of this pipeline may be claimed at `now` (no window: always)."""
        return self.window is None or in_window(self.window, now, zone(self.timezone))

    def schedule_problem(self) -> str | None:
        """What is inconsistent between the schedule fields, naming the field; None if fine."""
        if self.schedule is None:
            if self.sweep:
                return "field sweep: needs a schedule (when to sweep)"
            if self.inbox_mode == "scheduled":
                return "field inbox_mode: 'scheduled' needs a schedule (when to take the inbox)"
        elif not self.sweep and self.inbox_mode == "continuous":
            return "field schedule: nothing to do at a fire: set sweep and/or inbox_mode"
        return None

    @field_validator("prompt")
    @classmethod
    def _template_compiles(cls, value: str) -> str:
        try:
            _JINJA.from_string(value)
        except TemplateError as exc:
            raise ValueError(f"prompt template does not compile: {exc}") from None
        if "input" not in value:
            raise ValueError("prompt template never uses {{ input }}")
        return value

    def shared_prefix(self, **variables: str) -> str:
        """The rendered prompt up to the input: the part every job of this pipeline shares."""
        sentinel = "\x00INPUT\x00"
        return (
            _JINJA.from_string(self.prompt).render(input=sentinel, **variables).split(sentinel)[0]
        )

    def render(self, input_text: str, **variables: str) -> str:
        """The prompt for `input_text`. The input is passed as data, never parsed as a template."""
        rendered = _JINJA.from_string(self.prompt).render(input=input_text, **variables)
        return rendered + self.answer_prefix


def load_pipeline(path: Path) -> Pipeline:
    """Load one pipeline file; its name defaults to the file's stem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read pipeline: {exc}") from None
    raw.setdefault("name", path.stem)
    try:
        pipeline = Pipeline.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{path}: field {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
        ]
        raise PipelineError("\n".join(lines)) from None
    if pipeline.name != path.stem:
        raise PipelineError(
            f"{path}: field name: {pipeline.name!r} must match the file name {path.stem!r}"
        )
    if (problem := pipeline.schedule_problem()) is not None:
        raise PipelineError(f"{path}: {problem}")
    return pipeline


def load_pipelines(folder: Path) -> dict[str, Pipeline]:
    """Every `*.toml` in `folder`, by name. All errors are reported together."""
    if not folder.is_dir():
        raise PipelineError(f"pipelines folder {folder} does not exist")
    pipelines: dict[str, Pipeline] = {}
    errors: list[str] = []
    for path in sorted(folder.glob("*.toml")):
        try:
            pipeline = load_pipeline(path)
        except PipelineError as exc:
            errors.append(str(exc))
            continue
        pipelines[pipeline.name] = pipeline
    if errors:
        raise PipelineError("\n".join(errors))
    if not pipelines:
        raise PipelineError(f"no pipelines (*.toml) in {folder}")
    return pipelines
