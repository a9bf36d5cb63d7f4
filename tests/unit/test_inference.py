"""Pipeline runs with a scripted engine: JSON validation with one retry, map-reduce."""

from __future__ import annotations

import json

import pytest

from tests.fakes import FakeEngine
from worker.errors import InputError, PromptTooLong
from worker.llm.chat import chat_template_for
from worker.llm.generation import Generation
from worker.pipelines.inference import PipelineRun, ResultInvalid
from worker.pipelines.spec import Pipeline


class Model:
    def __init__(self) -> None:
        self.metadata: dict[str, str] = {}
        self.control_tokens: frozenset[str] = frozenset()


def run(engine: FakeEngine, pipeline: Pipeline) -> PipelineRun:
    return PipelineRun(engine, pipeline, lambda: chat_template_for(Model()))


SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["a", "b"]}},
    "required": ["label"],
    "additionalProperties": False,
}
JSON_PIPELINE = Pipeline(name="j", prompt="{{ input }}", output_format="json", json_schema=SCHEMA)


def test_a_valid_json_result_is_normalized_and_generated_under_the_schema() -> None:
    engine = FakeEngine(lambda _p: ' {"label":"a"} ')
    answer = run(engine, JSON_PIPELINE).run("x", {}, lambda: False)
    assert answer.value == {"label": "a"}
    assert answer.text == '{\n  "label": "a"\n}'
    assert engine.calls[0][1].json_schema == SCHEMA


def test_an_invalid_result_is_retried_once_with_sampling_then_fails() -> None:
    script = iter(['{"label": "c"}', '{"label": "b"}'])
    engine = FakeEngine(lambda _p: next(script))
    answer = run(engine, JSON_PIPELINE).run("x", {}, lambda: False)
    assert answer.value == {"label": "b"} and answer.calls == 2
    retry = engine.calls[1][1]
    assert retry.temperature > 0 and retry.seed == 1

    engine = FakeEngine(lambda _p: '{"label": "c"')
    with pytest.raises(ResultInvalid, match="result is not valid JSON: .*; retried once"):
        run(engine, JSON_PIPELINE).run("x", {}, lambda: False)
    engine = FakeEngine(lambda _p: '{"label": "c"}')
    with pytest.raises(ResultInvalid, match=r"at label: 'c' is not one of \['a', 'b'\]"):
        run(engine, JSON_PIPELINE).run("x", {}, lambda: False)
    assert len(engine.calls) == 2


def test_json_output_without_a_schema_must_be_an_object() -> None:
    pipeline = Pipeline(name="j", prompt="{{ input }}", output_format="json")
    engine = FakeEngine(lambda _p: "[1]")
    with pytest.raises(ResultInvalid, match="is not of type 'object'"):
        run(engine, pipeline).run("x", {}, lambda: False)
    assert engine.calls[0][1].json_schema == {"type": "object"}


def test_chat_mode_renders_system_and_user_messages() -> None:
    pipeline = Pipeline(name="c", mode="chat", system_prompt="Be brief.", prompt="Q: {{ input }}")
    engine = FakeEngine(lambda _p: " Yes.\nUser: more")
    answer = run(engine, pipeline).run("ok?", {}, lambda: False)
    prompt, generation = engine.calls[0]
    assert prompt == "Be brief.\n\nUser: Q: ok?\nAssistant:"
    assert "\nUser:" in generation.stop
    assert answer.text == "Yes.\nUser: more"  # the real engine stops at the stop string


LONG = Pipeline(
    name="long",
    prompt="Summarize: {{ input }}",
    long_input="chunk",
    reduce_prompt="Combine: {{ input }}",
    generation=Generation(max_tokens=20),
)


def document(paragraphs: int, words: int) -> str:
    return "\n\n".join(
        " ".join(f"p{p}w{w}" + ("." if w % 10 == 9 else "") for w in range(words))
        for p in range(paragraphs)
    )


def test_a_long_input_is_mapped_over_chunks_and_reduced_to_one_result() -> None:
    engine = FakeEngine(lambda p: f"S{len(p.split())}", n_ctx=100)
    text = document(10, 40)  # 400 words: four times the context
    answer = run(engine, LONG).run(text, {}, lambda: False)
    maps = [p for p, _ in engine.calls if p.startswith("Summarize:")]
    reduces = [p for p, _ in engine.calls if p.startswith("Combine:")]
    assert len(maps) >= 5 and len(reduces) == 1
    assert all(engine.count_tokens(p) + 1 <= 80 for p, _ in engine.calls)
    words_seen = " ".join(p.removeprefix("Summarize: ") for p in maps).split()
    assert words_seen == text.split()  # every word, once, in order
    assert answer.text == engine.answer(reduces[0])
    assert answer.calls == len(engine.calls)
    assert answer.prompt_tokens == sum(engine.count_tokens(p) + 1 for p, _ in engine.calls)


def test_reduce_runs_in_rounds_when_partials_do_not_fit_together() -> None:
    engine = FakeEngine(lambda p: " ".join(["w"] * 15), n_ctx=60)
    run(engine, LONG).run(document(12, 30), {}, lambda: False)
    reduces = [p for p, _ in engine.calls if p.startswith("Combine:")]
    assert len(reduces) > 1  # several rounds or groups, ending in one


def test_without_chunking_a_long_input_fails_with_the_token_count() -> None:
    engine = FakeEngine(lambda _p: "x", n_ctx=100)
    pipeline = LONG.model_copy(update={"long_input": "fail"})
    with pytest.raises(PromptTooLong, match=r"^input is 402 tokens; the context allows 80"):
        run(engine, pipeline).run(document(10, 40), {}, lambda: False)


def test_a_context_too_small_for_chunks_fails_clearly() -> None:
    engine = FakeEngine(lambda _p: "x", n_ctx=30)
    with pytest.raises(InputError, match="tokens per chunk"):
        run(engine, LONG).run(document(3, 40), {}, lambda: False)


def test_prompt_variables_are_data() -> None:
    pipeline = Pipeline(name="v", prompt="{{ title }}: {{ input }}")
    engine = FakeEngine(lambda _p: "ok")
    run(engine, pipeline).run("{{ 1 + 1 }}", {"title": "{{ 2 * 2 }}"}, lambda: False)
    assert engine.calls[0][0] == "{{ 2 * 2 }}: {{ 1 + 1 }}"
    with pytest.raises(InputError, match="needs a value the input lacks: 'title' is undefined"):
        run(engine, pipeline).run("x", {}, lambda: False)


def test_results_are_json_serializable() -> None:
    engine = FakeEngine(lambda _p: '{"label": "a"}')
    answer = run(engine, JSON_PIPELINE).run("x", {}, lambda: False)
    assert json.loads(answer.text) == answer.value
