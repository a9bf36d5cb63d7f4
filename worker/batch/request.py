"""One OpenAI request body: validated, turned into a prompt and generation, answered.

Honoured body fields: model, messages (chat) or prompt (completions), max_tokens,
max_completion_tokens, temperature, top_p, seed, stop, n (must be 1), response_format
(text, json_object, json_schema). Other fields are ignored, as a local model cannot
honour them (logprobs, tools, ...). Embedding requests: `batch.embeddings`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.batch.embeddings import EMBEDDINGS, EmbeddingRequest, parse_embedding_request
from worker.batch.errors import LineError as LineError  # re-exported: its home until now
from worker.llm.chat import ChatTemplate
from worker.llm.generation import Generation
from worker.llm.grammar import ANY_OBJECT, UnsupportedSchema, check_schema
from worker.pipelines.inference import Answer

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS)


def _invalid(message: str, param: str) -> LineError:
    return LineError("invalid_request", message, param)


@dataclass(frozen=True)
class Request:
    """A validated request body."""

    endpoint: str
    model: str
    messages: tuple[Mapping[str, str], ...]
    prompt: str | None
    generation: Mapping[str, Any]  # overrides of the batch pipeline's generation
    schema: Mapping[str, Any] | None


def _content(value: Any, index: int) -> str:
    """A message content: a string, or a list of text parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise _invalid("only text content parts are supported", f"messages[{index}]")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    if value is None:
        return ""
    raise _invalid("content must be a string or a list of text parts", f"messages[{index}]")


def _messages(body: Mapping[str, Any]) -> tuple[Mapping[str, str], ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _invalid("messages must be a non-empty list", "messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _invalid("each message needs a role and content", f"messages[{index}]")
        messages.append(
            {"role": message["role"], "content": _content(message.get("content"), index)}
        )
    return tuple(messages)


def _prompt(body: Mapping[str, Any]) -> str:
    raw = body.get("prompt")
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, str):
        raise _invalid("prompt must be a string (or a list of one string)", "prompt")
    return raw


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _invalid(f"{name} must be a number from {low} to {high}", name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(f"{name} must be an integer from {low} to {high}", name)
    return value


def _generation(body: Mapping[str, Any]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    max_tokens = _integer(body, "max_completion_tokens", 1, 32768)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 32768)
    if max_tokens is not None:
        overrides["max_tokens"] = max_tokens
    temperature = _number(body, "temperature", 0, 2)
    if temperature is not None:
        overrides["temperature"] = temperature
    top_p = _number(body, "top_p", 0, 1)
    if top_p is not None:
        overrides["top_p"] = max(top_p, 1e-6)
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _invalid("seed must be an integer", "seed")
        overrides["seed"] = seed % 2**32
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not (
            isinstance(stops, list)
            and len(stops) <= 4
            and all(isinstance(s, str) and s for s in stops)
        ):
            raise _invalid("stop must be a string or a list of up to 4 strings", "stop")
        overrides["stop"] = tuple(stops)
    n = body.get("n")
    if n is not None and n != 1:
        raise _invalid("only n = 1 is supported", "n")
    return overrides


def _schema(
    body: Mapping[str, Any], max_tokens: int | None, check: bool = True
) -> Mapping[str, Any] | None:
    """The response_format's JSON Schema, bounded and compiled to a grammar llama.cpp takes
    (`max_tokens`: the body's own; the pipeline's is checked in `prompt_and_generation`)."""
    response_format = body.get("response_format")
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _invalid("json_schema.schema must be an object", "response_format")
        if check:
            _check_schema(schema, max_tokens)
        return schema
    raise _invalid(
        "response_format.type must be text, json_object or json_schema", "response_format"
    )


def _check_schema(schema: dict[str, Any], max_tokens: int | None) -> None:
    try:
        check_schema(schema, max_tokens)
    except UnsupportedSchema as exc:
        raise _invalid(str(exc), "response_format") from None


def parse_line(url: str, body: Any, check_schema: bool = True) -> Request | EmbeddingRequest:
    """Validate a request body for any supported `url`; LineError names the bad field.

    `check_schema=False` leaves a JSON Schema's check (and grammar) to the caller, which
    makes it in the parsing sandbox (a line that already passed the sandbox's checks)."""
    if url == EMBEDDINGS:
        _check_url_and_model(url, body)
        return parse_embedding_request(body["model"], body)
    return parse_request(url, body, check_schema)


def _check_url_and_model(url: str, body: Any) -> str:
    if url not in ENDPOINTS:
        supported = ", ".join(ENDPOINTS)
        raise LineError("invalid_url", f"url {url!r} is not supported (use {supported})", "url")
    if not isinstance(body, dict):
        raise _invalid("body must be an object", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("body.model is required", "model")
    return model


def parse_request(url: str, body: Any, check_schema: bool = True) -> Request:
    """Validate a chat or completions request body for `url`; LineError names the bad
    field (`parse_line` takes embeddings too). `check_schema=False`: see `parse_line`."""
    if url == EMBEDDINGS:
        raise LineError("invalid_url", f"{EMBEDDINGS} is not a text generation request", "url")
    model = _check_url_and_model(url, body)
    generation = _generation(body)
    return Request(
        endpoint=url,
        model=model,
        messages=_messages(body) if url == CHAT else (),
        prompt=_prompt(body) if url == COMPLETIONS else None,
        generation=generation,
        schema=_schema(body, generation.get("max_tokens"), check_schema),
    )


def prompt_and_generation(
    request: Request, base: Generation, chat: ChatTemplate
) -> tuple[str, Generation]:
    """The engine's prompt and parameters for a request (LineError if its schema asks for
    more than the pipeline's max_tokens can produce)."""
    update: dict[str, Any] = dict(request.generation)
    update["json_schema"] = dict(request.schema) if request.schema is not None else None
    if update["json_schema"] is not None:
        _check_schema(update["json_schema"], update.get("max_tokens", base.max_tokens))
    if request.endpoint == CHAT:
        prompt = chat.render(request.messages)
        update["special"] = chat.special
        update["stop"] = tuple(dict.fromkeys((*update.get("stop", base.stop), *chat.stop)))
    else:
        assert request.prompt is not None
        prompt = request.prompt
        update["special"] = False  # a completions prompt is plain text
    return prompt, base.model_copy(update=update)


def stable_id(prefix: str, *parts: object) -> str:
    """A deterministic id: the same rows always give the same output files."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:24]
    return f"{prefix}{digest}"


def response_body(
    request: Request, answer: Answer, model: str, created: int, job_id: int
) -> dict[str, Any]:
    """A complete ChatCompletion or Completion object, with usage."""
    finish = answer.finish_reason if answer.finish_reason in ("stop", "length") else "stop"
    usage = {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }
    if request.endpoint == CHAT:
        return {
            "id": stable_id("chatcmpl-", "job", job_id),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
            "system_fingerprint": None,
        }
    return {
        "id": stable_id("cmpl-", "job", job_id),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": answer.text, "logprobs": None, "finish_reason": finish}],
        "usage": usage,
        "system_fingerprint": None,
    }
