"""Pipeline specs from `pipelines/*.toml`, validated at start-up; errors name file and field."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.errors import InputError
from worker.io.readers import ReaderName
from worker.llm.generation import Generation
from worker.pipelines.schedule_time import cron_trigger, in_window, parse_window, zone

_JINJA = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
PIPELINE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


@lru_cache(maxsize=64)
def _compiled(template: str) -> Template:
    return _JINJA.from_string(template)


# Fields that only one kind of pipeline uses (a pipeline's kind is its model's).
_GENERATION_ONLY = (
    "prompt",
    "mode",
    "system_prompt",
    "json_schema",
    "answer_prefix",
    "reduce_prompt",
    "generation",
)
_EMBEDDING_ONLY = ("pooling", "normalize", "input_prefix")
_TEXT_FORMATS = ("text", "markdown")


class PipelineError(Exception):
    """A pipeline file is invalid; the message names the file and the field."""


class Pipeline(BaseModel):
    """What to do with one kind of input: prompt, generation parameters, output format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=PIPELINE_NAME)
    description: str = ""
    # completion: the prompt is continued as text (base models). chat: the prompt is the
    # user message, rendered with the model's chat template (instruction-tuned models).
    mode: Literal["completion", "chat"] = "completion"
    system_prompt: str = ""
    model: str | None = None
    # How inputs are read: by file extension, or one reader for every file.
    reader: ReaderName = "auto"
    prompt: str = Field(
        default="{{ input }}",
        min_length=1,
        description="Jinja2 template; the input is `{{ input }}`",
    )
    # npy: embedding pipelines only (records files get a .npy of their vectors).
    output_format: Literal["text", "markdown", "json", "npy"] = "text"
    # Inline table, or in the file a path (relative to the pipeline file) to a .json schema.
    json_schema: dict[str, Any] | None = None
    # Start of the answer, written after the prompt so a base model continues it
    # (e.g. "-" to begin a bullet list). It is part of the result.
    answer_prefix: str = ""
    # fail: an input over the context window fails with its token count.
    # chunk: split it, run `prompt` on each chunk, combine with `reduce_prompt` (map-reduce).
    long_input: Literal["fail", "chunk"] = "fail"
    reduce_prompt: str | None = None
    generation: Generation = Generation()

    # Embedding pipelines (their model has kind = "embed"): how token vectors become one
    # (default: the model entry's, else the GGUF's), L2 normalization (default: the
    # model entry's), and text put before every input (e.g. "search_document: ").
    pooling: Literal["mean", "cls", "last"] | None = None
    normalize: bool | None = None
    input_prefix: str = ""

    # Schedules (README, "Schedules"): at each cron fire, enqueue the files matching
    # `sweep` that are new or changed, and/or (inbox_mode "scheduled") the waiting inbox.
    timezone: str = Field(default="UTC", description="IANA time zone of schedule and window")
    schedule: str | None = Field(default=None, description="cron: 5 fields, or 6 (seconds first)")
    sweep: tuple[str, ...] = Field(default=(), description="globs, absolute or under data_dir")
    inbox_mode: Literal["continuous", "scheduled"] = "continuous"
    window: str | None = Field(default=None, description="'HH:MM-HH:MM': when jobs are claimed")
    misfire_grace: float = Field(default=3600, ge=0, description="seconds; catch-up limit")
    # At most this many jobs of the pipeline run at once, over every daemon on the
    # database (None: no limit beyond the daemons' slots).
    max_concurrent: int | None = Field(default=None, ge=1, description="jobs running at once")
    # Completion hook (README, "Completion hook"): a program run without a shell when a job
    # of this pipeline ends; placeholders are whole items (worker.run.hooks.PLACEHOLDERS).
    on_final: tuple[str, ...] = ()
    on_final_timeout: float = Field(default=60.0, gt=0, le=3600, description="seconds")

    @field_validator("on_final")
    @classmethod
    def _hook_is_an_argv(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from worker.pipelines.hook_args import check_hook

        problem = check_hook(value)
        if problem is not None:
            raise ValueError(problem)
        return value

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

    @field_validator("prompt", "reduce_prompt")
    @classmethod
    def _template_compiles(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            used = meta.find_undeclared_variables(_JINJA.parse(value))
        except TemplateError as exc:
            raise ValueError(f"template does not compile: {exc}") from None
        if "input" not in used:
            raise ValueError("template never uses {{ input }}")
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema_is_usable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from worker.llm.grammar import UnsupportedSchema, check_schema

            try:
                check_schema(value)
            except UnsupportedSchema as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Pipeline:
        if self.generation.json_schema is not None or self.generation.special:
            raise ValueError(
                "generation.json_schema and generation.special are set by "
                "edge-worker: use json_schema and mode"
            )
        if self.json_schema is not None and self.output_format != "json":
            raise ValueError('json_schema needs output_format = "json"')
        if self.json_schema is not None:
            # Lengths are bounded by what max_tokens can produce (README, "Structured output").
            from worker.llm.grammar import UnsupportedSchema, check_schema

            try:
                check_schema(self.json_schema, self.generation.max_tokens)
            except UnsupportedSchema as exc:
                raise ValueError(f"field json_schema: {exc}") from None
        if self.output_format == "json" and self.answer_prefix:
            raise ValueError('answer_prefix cannot be used with output_format = "json"')
        if self.system_prompt and self.mode != "chat":
            raise ValueError('system_prompt needs mode = "chat"')
        generating, embedding = self.generation_fields, self.embedding_fields
        if generating and embedding:
            raise ValueError(
                f"fields {', '.join(generating)} are for text generation and "
                f"{', '.join(embedding)} for embeddings: a pipeline does one or the other"
            )
        if self.long_input == "chunk" and self.reduce_prompt is None and generating:
            raise ValueError('long_input = "chunk" needs a reduce_prompt')
        return self

    @property
    def generation_fields(self) -> list[str]:
        """The fields set in the file that only text generation uses."""
        found = [name for name in _GENERATION_ONLY if name in self.model_fields_set]
        if "output_format" in self.model_fields_set and self.output_format in _TEXT_FORMATS:
            found.append("output_format")
        return found

    @property
    def embedding_fields(self) -> list[str]:
        """The fields set in the file that only embeddings use."""
        found = [name for name in _EMBEDDING_ONLY if name in self.model_fields_set]
        if self.output_format == "npy":
            found.append("output_format")
        return found

    def kind_problem(self, model: str, kind: Literal["generate", "embed"]) -> str | None:
        """Why this pipeline cannot run on `model` of `kind`, naming the field; None if it can."""
        if kind == "embed":
            generating = self.generation_fields
            if self.reader == "openai-batch" or not generating:
                return None
            return (
                f"field {generating[0]}: model {model!r} is an embedding model "
                '(kind = "embed"): prompts, generation and schemas are for text generation; '
                "remove the field or pick a generation model"
            )
        embedding = self.embedding_fields
        if embedding:
            return (
                f"field {embedding[0]}: model {model!r} generates text; pooling, normalize, "
                'input_prefix and output_format = "npy" need an embedding model (kind = "embed")'
            )
        if self.long_input == "chunk" and self.reduce_prompt is None:
            return 'field long_input: long_input = "chunk" needs a reduce_prompt'
        return None

    @property
    def result_schema(self) -> dict[str, Any] | None:
        """The schema results must match: json_schema, or any JSON object for json output."""
        if self.json_schema is not None:
            return self.json_schema
        return {"type": "object"} if self.output_format == "json" else None

    def render(self, input_text: str, **variables: Any) -> str:
        """The completion-mode prompt for `input_text`, answer prefix included.

        The input is passed as data, never parsed as a template.
        """
        return self.render_template(self.prompt, input_text, variables) + self.answer_prefix

    @staticmethod
    def render_template(template: str, input_text: str, variables: Mapping[str, Any]) -> str:
        """A prompt template rendered with `input` and `variables` as data.

        InputError if the template needs a variable the input does not have.
        """
        try:
            return _compiled(template).render({**variables, "input": input_text})
        except UndefinedError as exc:
            raise InputError(f"the prompt template needs a value the input lacks: {exc}") from None


def load_pipeline(path: Path) -> Pipeline:
    """Load one pipeline file; its name defaults to the file's stem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read pipeline: {exc}") from None
    raw.setdefault("name", path.stem)
    if isinstance(raw.get("json_schema"), str):
        raw["json_schema"] = _load_schema_file(path, raw["json_schema"])
    try:
        pipeline = Pipeline.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{path}: field {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            if err["loc"]
            else f"{path}: {err['msg']}"
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


def _load_schema_file(pipeline_path: Path, relative: str) -> Any:
    schema_path = pipeline_path.parent / relative
    try:
        return json.loads(schema_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(
            f"{pipeline_path}: field json_schema: cannot read {schema_path}: {exc}"
        ) from None


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
