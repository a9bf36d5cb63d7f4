"""JSON Schema to a llama.cpp grammar (GBNF), and checking results against the schema.

Every schema is bounded before it reaches llama.cpp. The grammar converter writes out
each repetition in full (a string of `maxLength` N becomes N nested optional groups,
about 8 bytes each), and llama.cpp's parser refuses a grammar it finds too repetitive
(measured: `maxLength` 1001). A refused grammar gives a NULL sampler, and using it kills
the process. So a schema is checked here, once, where it enters (pipeline validation,
an OpenAI Batch line) and again when a request is admitted:

- its JSON text is at most MAX_SCHEMA_CHARS, nested at most MAX_SCHEMA_DEPTH deep,
  with only local `$ref`s;
- every length or count (`minLength`, `maxLength`, `minItems`, `maxItems`, and each
  `{n,m}` in a `pattern`) is at most `repeat_limit(max_tokens)`: MAX_REPEAT, and at
  most CHARS_PER_TOKEN per token of `max_tokens`, since a longer value is either
  impossible (a minimum) or no limit at all (a maximum) within `max_tokens`;
- every `pattern` and `patternProperties` key compiles with RE2, whose matching is
  linear in the text (Python's `re`, which jsonschema uses, backtracks: measured, one
  pattern the grammar accepts took 134 s on a 31-character result and doubles per
  character); `unevaluatedProperties` is refused beside `patternProperties` (jsonschema
  would match those with `re`);
- the grammar is at most MAX_GRAMMAR_BYTES, and llama.cpp's own parser accepts it
  (parsed without a model: no vocabulary is needed to parse GBNF).

Results are validated with RE2 for `pattern`, `patternProperties` (so `propertyNames`)
and `additionalProperties`: `parse_and_validate` never backtracks.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import re2
from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import SchemaError
from jsonschema.validators import extend

from worker.errors import InputError
from worker.llm.llama_logs import route_llama_logs

# `{"type": "object"}` alone: any JSON object (OpenAI's response_format json_object).
ANY_OBJECT: dict[str, Any] = {"type": "object"}

MAX_SCHEMA_CHARS = 65_536
MAX_SCHEMA_DEPTH = 64  # objects and arrays inside each other, in the schema's JSON
# llama.cpp's parser refuses a string of maxLength 1001 (the converter's nesting).
MAX_REPEAT = 1000
# Generous: few tokens of any vocabulary are longer. A length past this many characters
# per token of max_tokens cannot be reached, so it is a mistake or an attack.
CHARS_PER_TOKEN = 16
MAX_GRAMMAR_BYTES = 512 * 1024
REPEAT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems")
# `{n}`, `{n,}`, `{n,m}` in a regular expression.
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
# worker.llm.llama_logs sends llama.cpp's own log lines to this logger.
_LLAMA_LOGGER = logging.getLogger("edge_worker.llama_cpp")
_MAX_REASON = 300


class UnsupportedSchema(InputError):
    """The JSON Schema is invalid, too large, or cannot become a grammar llama.cpp accepts."""


class InvalidResult(Exception):
    """Generated text is not JSON, or does not validate against the schema."""


def repeat_limit(max_tokens: int | None) -> int:
    """The largest length or item count a schema may ask for, given `max_tokens`."""
    if max_tokens is None:
        return MAX_REPEAT
    return max(1, min(MAX_REPEAT, max_tokens * CHARS_PER_TOKEN))


def check_schema(schema: dict[str, Any], max_tokens: int | None = None) -> None:
    """Raise UnsupportedSchema (one line) if `schema` cannot be used for generation.

    `max_tokens`: the completion's limit, when known; lengths are bounded by it too.
    """
    compile_grammar(schema, max_tokens)


def compile_grammar(schema: dict[str, Any], max_tokens: int | None = None) -> str:
    """The GBNF grammar for a bounded, valid JSON Schema that llama.cpp's parser accepts.

    The only way to a grammar: UnsupportedSchema names the first problem.
    """
    if not isinstance(schema, dict):
        raise UnsupportedSchema("the JSON Schema must be an object")
    problem = _shape_problem(schema, max_tokens)
    if problem is not None:
        raise UnsupportedSchema(problem)
    text = json.dumps(schema, ensure_ascii=False)
    if len(text) > MAX_SCHEMA_CHARS:
        raise UnsupportedSchema(
            f"the JSON Schema is {len(text)} characters long; the limit is {MAX_SCHEMA_CHARS}"
        )
    with _remembered_lock:
        known = _remembered.get(text)
        if known is not None:
            _remembered.move_to_end(text)
            return known
    return _grammar(text)


# Grammars made in the parsing sandbox from untrusted schemas (an OpenAI Batch line's),
# by schema JSON: the daemon then never runs the Python converter on them itself.
_remembered: OrderedDict[str, str] = OrderedDict()
_remembered_lock = threading.Lock()
_REMEMBER = 256


def remember_grammar(schema: dict[str, Any], grammar: str) -> None:
    """Keep `grammar`, which `compile_grammar(schema, ...)` returned in the sandbox, so that
    compiling `schema` here (admission, the engine's sampler) uses it."""
    text = json.dumps(schema, ensure_ascii=False)
    with _remembered_lock:
        _remembered[text] = grammar
        _remembered.move_to_end(text)
        while len(_remembered) > _REMEMBER:
            _remembered.popitem(last=False)


def _over(value: Any, limit: int) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > limit


def _pattern_problem(pattern: str, limit: int) -> str | None:
    for match in _QUANTIFIER.finditer(pattern):
        for number in match.groups():
            # A digit string too long to be a sane count (and to parse cheaply).
            if number and (len(number) > 6 or int(number) > limit):
                return f"repeats {match.group(0)}"
    return None


def _regex_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the reason goes into the error, not onto stderr
    return options


_RE2_OPTIONS = _regex_options()


@lru_cache(maxsize=512)
def linear_regex(pattern: str) -> re2._Regexp[str]:
    """`pattern` compiled with RE2 (matching linear in the text); re2.error if RE2 cannot
    compile it (back-references, look-around, huge repetitions)."""
    return re2.compile(pattern, options=_RE2_OPTIONS)


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be checked in linear time, or None."""
    try:
        linear_regex(pattern)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        return f"cannot be checked in linear time (RE2: {_one_line(text)})"
    return None


def _regex_keywords_problem(key: str, value: Any, path: str) -> str | None:
    if key == "pattern" and isinstance(value, str):
        found = regex_problem(value)
        return None if found is None else f"pattern at {path} {found}"
    if key == "patternProperties" and isinstance(value, dict):
        for pattern in value:
            found = regex_problem(str(pattern))
            if found is not None:
                return f"patternProperties key {_one_line(repr(pattern))[:80]} at {path} {found}"
    return None


def _shape_problem(schema: dict[str, Any], max_tokens: int | None) -> str | None:
    """Depth, remote references, every length or count, and every regular expression,
    without recursion."""
    limit = repeat_limit(max_tokens)
    why = (
        f"the limit is {limit}"
        if max_tokens is None or limit == MAX_REPEAT
        else f"the limit is {limit} ({CHARS_PER_TOKEN} per token of max_tokens {max_tokens})"
    )
    stack: list[tuple[Any, int, str]] = [(schema, 1, "")]
    keywords: set[str] = set()
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            shown = where if len(where) <= 80 else where[:77] + "..."
            return f"the JSON Schema nests deeper than {MAX_SCHEMA_DEPTH} levels (at {shown})"
        if isinstance(node, list):
            stack.extend((item, depth + 1, f"{where}/{i}") for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            path = f"{where}/{key}"
            keywords.add(key)
            if key in REPEAT_KEYWORDS and _over(value, limit):
                size = value if isinstance(value, int) and value < 10**12 else "(huge)"
                return f"{key} {size} at {path} is too large for a grammar: {why}"
            if key == "pattern" and isinstance(value, str):
                found = _pattern_problem(value, limit)
                if found is not None:
                    return f"pattern at {path} {found}: too large for a grammar: {why}"
            regex = _regex_keywords_problem(key, value, path)
            if regex is not None:
                return regex
            if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                return f"$ref at {path} must be local (start with #): schemas are never fetched"
            stack.append((value, depth + 1, path))
    if {"unevaluatedProperties", "patternProperties"} <= keywords:
        return "unevaluatedProperties beside patternProperties is not supported"
    return None


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
def _grammar(schema_json: str) -> str:
    """Validate, convert and have llama.cpp parse a bounded schema (JSON text, cacheable).

    Properties are generated in the schema's own order (the converter would sort them),
    so prompts with examples in that order are followed.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = json.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise UnsupportedSchema(f"invalid JSON Schema: {_one_line(exc.message)}") from None
    try:
        grammar = str(json_schema_to_gbnf(schema_json, property_order(schema)))
    except Exception as exc:  # the converter raises bare exceptions and assertions
        raise UnsupportedSchema(
            f"JSON Schema cannot be turned into a grammar: {_one_line(str(exc))}"
        ) from None
    size = len(grammar.encode())
    if size > MAX_GRAMMAR_BYTES:
        raise UnsupportedSchema(
            f"the grammar for this JSON Schema would be {size} bytes; "
            f"the limit is {MAX_GRAMMAR_BYTES}: simplify the schema"
        )
    rejected = llama_rejects(grammar)
    if rejected is not None:
        raise UnsupportedSchema(f"llama.cpp cannot use the grammar of this JSON Schema: {rejected}")
    return grammar


def llama_rejects(grammar: str) -> str | None:
    """Why llama.cpp's grammar parser refuses `grammar` (one line), or None if it accepts it."""
    import llama_cpp

    route_llama_logs()
    with _llama_lines() as lines:
        # No vocabulary: parsing GBNF needs none (only `<token>` references do, and the
        # converter never writes them).
        sampler = llama_cpp.llama_sampler_init_grammar(None, grammar.encode(), b"root")
    if sampler:
        llama_cpp.llama_sampler_free(sampler)
        return None
    return llama_reason(lines)


def llama_reason(lines: list[str]) -> str:
    """The one line that says why llama.cpp refused a grammar, from its log lines."""
    for line in lines:
        marker = "error parsing grammar:"
        if marker in line:
            return _one_line(line.split(marker, 1)[1])
    for line in lines:
        if "grammar" in line and "failed to parse grammar" not in line:
            return _one_line(line)
    # Most parse errors go to stderr, not through llama.cpp's log callback.
    return "its grammar parser refused it (the reason is on the daemon's stderr)"


@contextmanager
def _llama_lines() -> Iterator[list[str]]:
    """The lines llama.cpp logs from this thread meanwhile (not passed on: the caller
    reports them as the reason)."""
    capture = _ThreadCapture()
    _LLAMA_LOGGER.addFilter(capture)
    try:
        yield capture.lines
    finally:
        _LLAMA_LOGGER.removeFilter(capture)


class _ThreadCapture(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        self.lines.append(record.getMessage())
        return False


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


# jsonschema's own keywords, with RE2 for each regular expression -----------------------
Keyword = Any  # (validator, value, instance, schema) -> Iterator[ValidationError]


def _pattern(validator: Any, pattern: str, instance: Any, _schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not linear_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, _schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        regex = linear_regex(pattern)
        for key, value in instance.items():
            if regex.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Properties that neither `properties` nor `patternProperties` cover."""
    properties = schema.get("properties", {})
    patterns = [linear_regex(p) for p in schema.get("patternProperties", {})]
    return [
        key
        for key in instance
        if key not in properties and not any(regex.search(key) for regex in patterns)
    ]


def _additional_properties(
    validator: Any, allowed: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif not allowed and extras:
        shown = ", ".join(repr(extra) for extra in sorted(extras))
        yield ValidationError(f"Additional properties are not allowed ({shown} unexpected)")


LinearValidator = extend(  # type: ignore[no-untyped-call]
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


def parse_and_validate(text: str, schema: dict[str, Any]) -> Any:
    """The parsed JSON value of `text`; InvalidResult names the first problem.

    Regular expressions are matched with RE2 (linear time). UnsupportedSchema if one
    cannot be (a schema that never passed `check_schema`)."""
    try:
        # strict=False: the grammar lets raw newlines into strings; they are harmless.
        value = json.loads(text, strict=False)
    except json.JSONDecodeError as exc:
        raise InvalidResult(f"result is not valid JSON: {exc}") from None
    try:
        error = next(iter(LinearValidator(schema).iter_errors(value)), None)
    except re2.error as exc:
        raise UnsupportedSchema(f"a regular expression of the JSON Schema: {exc}") from None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise InvalidResult(f"result does not match the JSON Schema at {where}: {error.message}")
    return value
