"""JSON Schemas are bounded before they reach llama.cpp: lengths, counts, size, depth,
references; a grammar llama.cpp refuses is a clear error, and a NULL sampler is never used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.batch.request import LineError, parse_request, prompt_and_generation
from worker.llm.chat import TRANSCRIPT_TEMPLATE, ChatTemplate
from worker.llm.generation import Generation
from worker.llm.grammar import (
    MAX_GRAMMAR_BYTES,
    MAX_REPEAT,
    MAX_SCHEMA_CHARS,
    MAX_SCHEMA_DEPTH,
    UnsupportedSchema,
    check_schema,
    compile_grammar,
    llama_rejects,
    repeat_limit,
)
from worker.llm.sampling import SamplerChain
from worker.pipelines.spec import PipelineError, load_pipeline

CHAT = "/v1/chat/completions"


def string(**limits: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"summary": {"type": "string", **limits}}}


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (string(maxLength=3000), "maxLength 3000 at /properties/summary/maxLength"),
        (string(minLength=10**20), "minLength (huge) at /properties/summary/minLength"),
        (string(maxLength=1e308), "maxLength (huge)"),
        ({"type": "array", "maxItems": 5000}, "maxItems 5000 at /maxItems"),
        ({"type": "array", "minItems": 1001}, "minItems 1001"),
        (string(pattern="^a{0,5000}$"), "pattern at /properties/summary/pattern repeats {0,5000}"),
        (string(pattern="^a{99999999999999999999}$"), "repeats {99999999999999999999}"),
        # A property named like a keyword is a schema like any other.
        (
            {"type": "object", "properties": {"enum": {"type": "string", "maxLength": 2000}}},
            "maxLength 2000 at /properties/enum/maxLength",
        ),
        (string(**{"$ref": "https://example.com/s.json"}), "must be local"),
    ],
)
def test_oversized_or_remote_schemas_are_refused_with_the_reason(
    schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(UnsupportedSchema) as caught:
        check_schema(schema)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_lengths_are_bounded_by_what_max_tokens_can_produce() -> None:
    assert repeat_limit(None) == MAX_REPEAT
    assert repeat_limit(10) == 160
    assert repeat_limit(10**6) == MAX_REPEAT
    check_schema(string(maxLength=160), max_tokens=10)
    with pytest.raises(UnsupportedSchema, match="the limit is 160 .16 per token of max_tokens 10"):
        check_schema(string(maxLength=161), max_tokens=10)
    check_schema(string(maxLength=161))  # max_tokens not known yet: only the hard cap


def test_the_limits_still_allow_real_schemas() -> None:
    assert compile_grammar(string(minLength=1, maxLength=MAX_REPEAT), max_tokens=256)
    uuid = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    assert compile_grammar(string(pattern=uuid))
    items = {"type": "array", "items": string(maxLength=200), "maxItems": 50}
    assert compile_grammar({"type": "object", "properties": {"a": items}})
    local = {
        "type": "object",
        "$defs": {"name": {"type": "string", "maxLength": 40}},
        "properties": {"who": {"$ref": "#/$defs/name"}},
    }
    assert compile_grammar(local)


def test_schema_size_depth_and_grammar_size_are_limited() -> None:
    deep: dict[str, Any] = {"type": "array"}
    node = deep
    for _ in range(MAX_SCHEMA_DEPTH):
        node["items"] = {"type": "array"}
        node = node["items"]
    with pytest.raises(UnsupportedSchema, match=f"nests deeper than {MAX_SCHEMA_DEPTH} levels"):
        check_schema(deep)
    big = {"type": "object", "description": "x" * MAX_SCHEMA_CHARS}
    with pytest.raises(UnsupportedSchema, match=f"the limit is {MAX_SCHEMA_CHARS}"):
        check_schema(big)
    wide = {
        "type": "object",
        "properties": {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(80)},
    }
    with pytest.raises(UnsupportedSchema, match=f"the limit is {MAX_GRAMMAR_BYTES}"):
        check_schema(wide)


def test_llama_cpp_parses_the_grammar_without_a_model() -> None:
    assert llama_rejects('root ::= "a" | "b"') is None
    assert "left recursion" in str(llama_rejects('root ::= root "a"'))
    assert llama_rejects('root ::= "a" missing')  # refused, with a reason of some kind


class _FakeLlama:
    """Enough of llama_cpp for SamplerChain: samplers are ints, NULL is 0."""

    def __init__(self, null: str) -> None:
        self.null = null
        self.freed: list[object] = []
        self.added: list[object] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("llama_sampler_init_"):
            kind = name.removeprefix("llama_sampler_init_")
            return lambda *args: 0 if kind == self.null else kind
        raise AttributeError(name)

    def llama_sampler_chain_default_params(self) -> Any:
        return type("Params", (), {"no_perf": False})()

    def llama_sampler_chain_init(self, params: Any) -> str:
        return "chain"

    def llama_sampler_chain_add(self, chain: str, sampler: object) -> None:
        self.added.append(sampler)

    def llama_sampler_free(self, chain: object) -> None:
        self.freed.append(chain)


def test_a_null_grammar_sampler_is_an_error_never_added() -> None:
    ll = _FakeLlama(null="grammar")
    generation = Generation(json_schema=string(maxLength=10))
    with pytest.raises(UnsupportedSchema, match="llama.cpp refused the grammar"):
        SamplerChain(ll, None, generation, 0)
    assert ll.added == [] and ll.freed == ["chain"]


def test_any_null_sampler_frees_the_chain_and_raises() -> None:
    ll = _FakeLlama(null="dist")
    with pytest.raises(RuntimeError, match="dist sampler"):
        SamplerChain(ll, None, Generation(temperature=0.7), 0)
    assert 0 not in ll.added and ll.freed == ["chain"]
    ok = _FakeLlama(null="none")
    chain = SamplerChain(ok, None, Generation(json_schema=string(maxLength=10)), 0)
    assert ok.added[0] == "grammar"
    chain.free()
    chain.free()
    assert ok.freed == ["chain"]


def test_an_oversized_schema_never_reaches_the_sampler() -> None:
    ll = _FakeLlama(null="none")
    with pytest.raises(UnsupportedSchema, match="maxLength 3000"):
        SamplerChain(ll, None, Generation(json_schema=string(maxLength=3000)), 0)
    assert ll.added == [] and ll.freed == ["chain"]


def _batch_body(schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        **extra,
    }


def test_a_batch_line_with_an_oversized_schema_is_refused() -> None:
    with pytest.raises(LineError) as caught:
        parse_request(CHAT, _batch_body(string(maxLength=3000)))
    assert caught.value.code == "invalid_request"
    assert caught.value.param == "response_format"
    assert "maxLength 3000" in caught.value.message
    with pytest.raises(LineError, match="16 per token of max_tokens 4"):
        parse_request(CHAT, _batch_body(string(maxLength=100), max_tokens=4))


def test_a_batch_line_is_bounded_by_the_pipeline_max_tokens_when_it_sets_none() -> None:
    request = parse_request(CHAT, _batch_body(string(maxLength=100)))
    chat = ChatTemplate(TRANSCRIPT_TEMPLATE, "built-in")
    _prompt, generation = prompt_and_generation(request, Generation(max_tokens=256), chat)
    assert generation.json_schema == string(maxLength=100)
    with pytest.raises(LineError, match="max_tokens 4"):
        prompt_and_generation(request, Generation(max_tokens=4), chat)


PIPELINE = """
prompt = "{{{{ input }}}}"
output_format = "json"
[generation]
max_tokens = {max_tokens}
[json_schema]
type = "object"
[json_schema.properties.summary]
type = "string"
maxLength = {max_length}
"""


def test_a_pipeline_schema_over_the_limits_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(PIPELINE.format(max_tokens=256, max_length=4000))
    with pytest.raises(PipelineError, match="field json_schema: .*maxLength 4000 .* limit is 1000"):
        load_pipeline(path)
    path.write_text(PIPELINE.format(max_tokens=8, max_length=500))
    small = "field json_schema: maxLength 500 .* limit is 128 .16 per token of max_tokens 8"
    with pytest.raises(PipelineError, match=small):
        load_pipeline(path)
    path.write_text(PIPELINE.format(max_tokens=256, max_length=500))
    assert load_pipeline(path).json_schema == json.loads(
        '{"type": "object", "properties": {"summary": {"type": "string", "maxLength": 500}}}'
    )
