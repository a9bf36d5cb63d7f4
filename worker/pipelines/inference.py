"""One pipeline run on one input: prompt, generation, JSON validation, map-reduce for long inputs.

No job or file logic here: this is what `edge-worker pipelines try` and the runner share.
JSON results are validated by the `validate` they are given: the daemon's and the CLI's
run `parse_and_validate` in the parsing sandbox (worker/sandbox). Long inputs are split
here, in the daemon, with its loaded tokenizer: the splitter is linear in the text, and
the text already passed the sandbox's readers and max_input_bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import GenerationInterrupted, InputError
from worker.llm.chat import ChatTemplate
from worker.llm.chunking import group, split_text
from worker.llm.engine import Engine
from worker.llm.generation import Generation
from worker.llm.grammar import InvalidResult, parse_and_validate
from worker.pipelines.spec import Pipeline

# Tokens kept free in every chunk: tokenizing a concatenation can differ from the sum.
CHUNK_MARGIN_TOKENS = 8
MIN_CHUNK_TOKENS = 16
# Stands for the input when finding the prompt text every job of a pipeline shares.
_SENTINEL = "\x00EDGE-WORKER-INPUT\x00"
# A retry after an invalid JSON result samples instead of repeating the greedy answer.
RETRY_TEMPERATURE = 0.7
# Parses and checks a generated text against a JSON Schema (InvalidResult if it fails).
Validate = Callable[[str, dict[str, Any]], Any]


class ResultInvalid(InputError):
    """The result did not validate against the JSON Schema, twice."""


@dataclass(frozen=True)
class Answer:
    """A finished result and what it cost (all calls of a map-reduce together)."""

    text: str
    value: Any
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    calls: int = 1


def generate(
    engine: Engine,
    prompt: str,
    generation: Generation,
    should_stop: Callable[[], bool],
    prefix: str = "",
    strip: bool = True,
    shared_prefix: str | None = None,
    validate: Validate = parse_and_validate,
) -> Answer:
    """One completion of `prompt`; with a JSON Schema, validated (by `validate`) and
    retried once if invalid.

    The result is `prefix` + the generated text, stripped unless `strip` is False; JSON
    results are re-serialized.
    ResultInvalid carries the validation error of the second try.
    """
    schema = generation.json_schema
    prompt_tokens = completion_tokens = 0
    attempt = generation
    for tries in (1, 2):
        completion = engine.complete(prompt, attempt, should_stop, shared_prefix=shared_prefix)
        prompt_tokens += completion.prompt_tokens
        completion_tokens += completion.completion_tokens
        text = prefix + completion.text
        text = text.strip() if strip or schema is not None else text
        if schema is None:
            return Answer(text, None, prompt_tokens, completion_tokens, completion.finish_reason)
        try:
            value = validate(text, schema)
        except InvalidResult as exc:
            if completion.finish_reason == "length":
                reason = f"{exc} (generation stopped at max_tokens {attempt.max_tokens})"
            else:
                reason = str(exc)
            if tries == 2:
                raise ResultInvalid(f"{reason}; retried once") from None
            attempt = generation.model_copy(
                update={
                    "temperature": max(generation.temperature, RETRY_TEMPERATURE),
                    "seed": (generation.seed or 0) + 1,
                }
            )
            continue
        normalized = json.dumps(value, ensure_ascii=False, indent=2)
        return Answer(
            normalized, value, prompt_tokens, completion_tokens, completion.finish_reason, tries
        )
    raise AssertionError("unreachable")


class PipelineRun:
    """Runs one pipeline on inputs with one engine (and its chat template, in chat mode)."""

    def __init__(
        self,
        engine: Engine,
        pipeline: Pipeline,
        chat: Callable[[], ChatTemplate],
        validate: Validate = parse_and_validate,
    ) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self._chat = chat
        self._validate = validate

    @property
    def generation(self) -> Generation:
        """The pipeline's generation parameters, with its schema and the template's needs."""
        pipeline = self.pipeline
        update: dict[str, Any] = {"json_schema": pipeline.result_schema}
        if pipeline.mode == "chat":
            chat = self._chat()
            update["special"] = chat.special
            update["stop"] = tuple(dict.fromkeys((*pipeline.generation.stop, *chat.stop)))
        return pipeline.generation.model_copy(update=update)

    def prompt(
        self, input_text: str, variables: Mapping[str, Any], template: str | None = None
    ) -> str:
        """The full prompt string the engine gets for `input_text`."""
        pipeline = self.pipeline
        body = pipeline.render_template(template or pipeline.prompt, input_text, variables)
        if pipeline.mode == "completion":
            return body + pipeline.answer_prefix
        messages = [{"role": "user", "content": body}]
        if pipeline.system_prompt:
            messages.insert(0, {"role": "system", "content": pipeline.system_prompt})
        return self._chat().render(messages) + pipeline.answer_prefix

    def run(
        self, input_text: str, variables: Mapping[str, Any], should_stop: Callable[[], bool]
    ) -> Answer:
        """The result for one input: one call, or map-reduce when it is too long and allowed."""
        prompt = self.prompt(input_text, variables)
        generation = self.generation
        if self.pipeline.long_input == "fail" or self._fits(prompt, generation):
            shared = self.prompt(_SENTINEL, variables).split(_SENTINEL)[0]
            return self._call(prompt, generation, should_stop, shared)
        return self._map_reduce(input_text, variables, generation, should_stop)

    # Internals ---------------------------------------------------------------
    def _call(
        self,
        prompt: str,
        generation: Generation,
        should_stop: Callable[[], bool],
        shared_prefix: str | None = None,
    ) -> Answer:
        if should_stop():
            raise GenerationInterrupted("stopped between calls")
        return generate(
            self.engine,
            prompt,
            generation,
            should_stop,
            self.pipeline.answer_prefix,
            shared_prefix=shared_prefix,
            validate=self._validate,
        )

    def _allowed(self, generation: Generation) -> int:
        return self.engine.n_ctx - generation.max_tokens

    def _fits(self, prompt: str, generation: Generation) -> bool:
        return self.engine.count_tokens(prompt) + 1 <= self._allowed(generation)

    def _budget(self, variables: Mapping[str, Any], generation: Generation, template: str) -> int:
        """Tokens left for the input in `template` beside max_tokens."""
        overhead = self.engine.count_tokens(self.prompt("", variables, template)) + 1
        return self._allowed(generation) - overhead - CHUNK_MARGIN_TOKENS

    def _map_reduce(
        self,
        input_text: str,
        variables: Mapping[str, Any],
        generation: Generation,
        should_stop: Callable[[], bool],
    ) -> Answer:
        count = self.engine.count_tokens
        reduce_prompt = self.pipeline.reduce_prompt
        assert reduce_prompt is not None  # checked when the pipeline loads
        budget = self._budget(variables, generation, self.pipeline.prompt)
        if budget < MIN_CHUNK_TOKENS:
            raise InputError(
                f"input is {count(input_text)} tokens; the prompt and max_tokens "
                f"{generation.max_tokens} leave {max(budget, 0)} tokens per chunk in "
                f"n_ctx {self.engine.n_ctx}: raise n_ctx or lower max_tokens"
            )
        answers: list[Answer] = []

        def call(prompt: str) -> str:
            answers.append(self._call(prompt, generation, should_stop))
            return answers[-1].text

        partials = [
            call(self.prompt(chunk, variables)) for chunk in split_text(input_text, budget, count)
        ]
        reduce_budget = self._budget(variables, generation, reduce_prompt)
        while len(partials) > 1:
            groups = group(partials, reduce_budget, count)
            if len(groups) >= len(partials):
                raise InputError(
                    f"the {len(partials)} partial results do not fit together in a reduce "
                    f"prompt (n_ctx {self.engine.n_ctx}, max_tokens {generation.max_tokens}): "
                    "raise n_ctx or lower max_tokens"
                )
            partials = [call(self.prompt("\n\n".join(g), variables, reduce_prompt)) for g in groups]
        last = answers[-1]
        return Answer(
            last.text,
            last.value,
            sum(a.prompt_tokens for a in answers),
            sum(a.completion_tokens for a in answers),
            last.finish_reason,
            sum(a.calls for a in answers),
        )
