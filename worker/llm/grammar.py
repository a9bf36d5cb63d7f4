"""JSON Schema to a llama.cpp grammar (GBNF), and checking results against the schema."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from worker.errors import InputError

# `{"type": "object"}` alone: any JSON object (OpenAI's response_format json_object).
ANY_OBJECT: dict[str, Any] = {"type": "object"}


class UnsupportedSchema(InputError):
    """The JSON Schema is invalid, or uses something the grammar converter cannot express."""


class InvalidResult(Exception):
    """Generated text is not JSON, or does not validate against the schema."""


def check_schema(schema: dict[str, Any]) -> None:
    """Raise UnsupportedSchema if `schema` is not a valid schema or cannot become a grammar."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise UnsupportedSchema(f"invalid JSON Schema: {exc.message}") from None
    gbnf(json.dumps(schema))


def property_order(schema: Any, found: dict[str, None] | None = None) -> list[str]:
    """Property names in the order the schema declares them (all nesting levels)."""
    found = {} if found is None else found
    if isinstance(schema, dict):
        for name, value in schema.items():
            if name == "properties" and isinstance(value, dict):
                found.update(dict.fromkeys(value))
            property_order(value, found)
    elif isinstance(schema, list):
        for item in schema:
            property_order(item, found)
    return list(found)


@lru_cache(maxsize=64)
def gbnf(schema_json: str) -> str:
    """The GBNF grammar for a JSON Schema (given as JSON text, so results can be cached).

    Properties are generated in the schema's own order (the converter would sort them),
    so prompts with examples in that order are followed.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    order = property_order(json.loads(schema_json))
    try:
        return str(json_schema_to_gbnf(schema_json, order))
    except Exception as exc:  # the converter raises bare exceptions and assertions
        raise UnsupportedSchema(f"JSON Schema cannot be turned into a grammar: {exc}") from None


def parse_and_validate(text: str, schema: dict[str, Any]) -> Any:
    """The parsed JSON value of `text`; InvalidResult names the first problem."""
    try:
        # strict=False: the grammar lets raw newlines into strings; they are harmless.
        value = json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        raise InvalidResult(f"result is not valid JSON: {exc}") from None
    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise InvalidResult(f"result does not match the JSON Schema at {where}: {error.message}")
    return value
