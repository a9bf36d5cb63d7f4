"""OpenAI Batch lines: per-line validation, request mapping and OpenAI-shaped bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import Completion as OpenAICompletion
from openai.types.chat import ChatCompletion

from worker.batch.lines import check_lines, finish_lines, read_batch
from worker.batch.request import (
    LineError,
    parse_request,
    prompt_and_generation,
    response_body,
)
from worker.errors import InputError
from worker.llm.chat import TRANSCRIPT_TEMPLATE, ChatTemplate
from worker.llm.generation import Generation
from worker.pipelines.inference import Answer
from worker.pipelines.models import UnknownModel

CHAT_URL = "/v1/chat/completions"


def line(custom_id: str, url: str = CHAT_URL, **body: Any) -> str:
    body.setdefault("model", "gpt-4o-mini")
    if url == CHAT_URL:
        body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    else:
        body.setdefault("prompt", "Once upon a time")
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def resolve(name: str) -> str:
    if name not in ("gpt-4o-mini", "gemma-3-270m"):
        raise UnknownModel(f"model {name!r} is not in the model table")
    return "gemma-3-270m"


def test_valid_and_bad_lines_are_told_apart_line_by_line() -> None:
    text = "\n".join(
        [
            line("a"),
            "{not json",
            line("a"),  # duplicate
            line("b", url="/v1/moderations"),
            json.dumps({"custom_id": "c", "method": "GET", "url": CHAT_URL, "body": {}}),
            line("d", model="gpt-9"),
            line("e", n=2),
            "",
            line("f", url="/v1/completions"),
            json.dumps({"method": "POST", "url": CHAT_URL, "body": {}}),
        ]
    )
    lines = read_batch(text.encode(), resolve)
    got = [(x.line, x.custom_id, x.error.code if x.error else None) for x in lines]
    assert got == [
        (1, "a", None),
        (2, None, "invalid_json"),
        (3, "a", "duplicate_custom_id"),
        (4, "b", "invalid_url"),
        (5, "c", "invalid_method"),
        (6, "d", "model_not_found"),
        (7, "e", "invalid_request"),
        (9, "f", None),
        (10, None, "invalid_request"),
    ]
    assert lines[1].error is not None and "line 2 is not valid JSON" in lines[1].error.message
    assert lines[5].error is not None and "gpt-9" in lines[5].error.message


def test_empty_batch_file_fails_as_a_whole() -> None:
    with pytest.raises(InputError, match="the file holds only whitespace"):
        read_batch(b"\n\n", resolve)


def test_body_fields_are_honoured() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    request = parse_request(
        CHAT_URL,
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
            ],
            "max_completion_tokens": 7,
            "max_tokens": 99,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 3,
            "stop": "END",
            "n": 1,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": schema},
            },
        },
    )
    chat = ChatTemplate(TRANSCRIPT_TEMPLATE, "built-in", stop=("\nUser:",))
    prompt, generation = prompt_and_generation(request, Generation(max_tokens=256), chat)
    assert prompt == "Be brief.\n\nUser: Hi there\nAssistant:"
    assert generation.max_tokens == 7
    assert generation.temperature == 0.5
    assert generation.top_p == 0.9
    assert generation.seed == 3
    assert generation.stop == ("END", "\nUser:")
    assert generation.json_schema == schema
    assert generation.special is False

    completion = parse_request(
        "/v1/completions",
        {"model": "m", "prompt": ["Say"], "response_format": {"type": "json_object"}},
    )
    prompt, generation = prompt_and_generation(completion, Generation(), chat)
    assert prompt == "Say"
    assert generation.json_schema == {"type": "object"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0]"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"n": 3}, "n"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}},
            "response_format",
        ),
    ],
)
def test_invalid_bodies_name_the_parameter(body: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **body}
    with pytest.raises(LineError) as info:
        parse_request(CHAT_URL, body)
    assert info.value.code == "invalid_request"
    assert info.value.param == param


def test_response_bodies_validate_as_openai_sdk_models() -> None:
    answer = Answer("Hello there.", None, 12, 3, "length")
    chat = parse_request(
        CHAT_URL, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    )
    body = response_body(chat, answer, "gemma-3-270m", 1_700_000_000, 7)
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[0].message.content == "Hello there."
    assert parsed.choices[0].finish_reason == "length"
    assert parsed.usage is not None and parsed.usage.total_tokens == 15
    assert body == response_body(chat, answer, "gemma-3-270m", 1_700_000_000, 7)  # stable ids

    completion = parse_request("/v1/completions", {"model": "m", "prompt": "Once"})
    body = response_body(completion, answer, "gemma-3-270m", 1_700_000_000, 8)
    assert OpenAICompletion.model_validate(body).choices[0].text == "Hello there."


def test_the_sandboxed_checks_and_the_daemons_finish_give_what_one_pass_did() -> None:
    # check_lines (in the sandbox) leaves models and duplicates to finish_lines (in the
    # daemon): a line refused for its model does not take its custom_id.
    data = "\n".join([line("a", model="gpt-5"), line("a"), line("a"), "{bad", line("b")]).encode()
    checked = check_lines(data, 10)
    assert [x.error.code if x.error else None for x in checked] == [
        None,
        None,
        None,
        "invalid_json",
        None,
    ]
    finished = finish_lines(checked, resolve)
    assert [x.error.code if x.error else None for x in finished] == [
        "model_not_found",
        None,
        "duplicate_custom_id",
        "invalid_json",
        None,
    ]

    def shown(lines: list[Any]) -> list[tuple[Any, ...]]:
        return [(x.line, x.custom_id, x.request, str(x.error)) for x in lines]

    assert shown(finished) == shown(read_batch(data, resolve, 10))


def test_the_recorded_owner_round_trips_and_is_never_shown() -> None:
    from datetime import UTC, datetime

    from worker.batch.fidelity import BatchMeta, decode_meta
    from worker.batch.files import batch_object
    from worker.queue.models import Batch

    meta = BatchMeta(model="m", owner=1001).but(usage={"total_tokens": 3})
    assert decode_meta(meta.encode()).owner == 1001  # kept through later updates
    assert decode_meta('{"owner": "1001; rm -rf"}').owner is None  # only an integer
    batch = Batch(
        id="batch_1",
        job_id=1,
        input_name="a.jsonl",
        endpoint="/v1/chat/completions",
        status="completed",
        errors_json=meta.encode(),
        created_at=datetime.now(UTC),
    )
    assert "owner" not in batch_object(batch, {"total": 0, "completed": 0, "failed": 0})
    assert "1001" not in str(batch_object(batch, {"total": 0, "completed": 0, "failed": 0}))
