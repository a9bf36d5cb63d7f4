"""Linear algorithms on hostile input: the HTML reader, schema regular expressions (RE2)
and the splitter. Each hostile case is one the code before took minutes or more on;
the CPU bounds here are 10-50x what the linear code needs, and far below the old cost."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from worker.io.readers.html import visible_text
from worker.llm.chunking import split_text
from worker.llm.grammar import InvalidResult, UnsupportedSchema, check_schema, parse_and_validate


def cpu_seconds(work: Callable[[], Any]) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


# HTML -------------------------------------------------------------------------------------

# 400 KB of each class of markup that makes a parser rescan: the reader before was
# quadratic on the first (about 90 s for this size), html.parser on unclosed comments,
# lexbor on deep nesting.
HOSTILE_HTML = {
    "unclosed hidden tags and unmatched end tags": "<svg></i>" * 44_000,
    "hidden tags closed at the end": "<svg>" * 40_000 + "</svg>" * 33_000,
    "deep nesting": "<div>" * 80_000,
    "unclosed comments": "<!--" * 100_000,
    "unclosed quotes": '<a "' * 100_000,
    "a flood of <": "<" * 400_000,
    "unclosed scripts": "<script>" * 50_000,
    "heads and bodies": "<head><body>" * 33_000,
}


@pytest.mark.parametrize("markup", HOSTILE_HTML.values(), ids=HOSTILE_HTML.keys())
def test_the_html_reader_is_linear_on_markup_that_makes_parsers_rescan(markup: str) -> None:
    assert cpu_seconds(lambda: visible_text(markup)) < 3.0


def test_the_html_reader_still_reads_what_a_browser_shows() -> None:
    page = (
        "<p>One &amp; <b>two</b></p><svg><text>hidden</text></svg>"
        "<a title=\"x > y\" href='z'>link</a><br/>"
        "<script>if (a < b) { x = '</p>' }</script><style>p{}</STYLE >"
        "</i></svg></script><template><p>tpl</p></template>"
        "<p>after &lt;tags&gt;<svg/>still</p><!-- gone --><p>end"
    )
    assert visible_text(page).splitlines() == [
        "One & two",
        "link",
        "",
        "after <tags>still",
        "",
        "end",
    ]


def test_an_end_tag_closes_only_through_its_own_element() -> None:
    # </svg> pops the stack down to the matching <svg>; stray end tags change nothing.
    assert visible_text("<svg><noscript>a</svg>b</noscript>c") == "bc"
    assert visible_text("<object></p></div>x</object>y") == "y"


def test_a_tag_cut_off_by_the_end_drops_the_rest() -> None:
    assert visible_text('<p>kept</p><a href="never closed') == "kept"


# Schema regular expressions --------------------------------------------------------------

CATASTROPHIC = "^(a|aa?){30}\\\\n$"  # Python's re: 3^30 steps on 60 a's and a newline


def test_a_catastrophic_pattern_is_checked_in_linear_time() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": CATASTROPHIC}}}
    check_schema(schema, 64)
    result = json.dumps({"s": "a" * 60 + "\n"})

    def validate() -> None:
        with pytest.raises(InvalidResult, match="does not match"):
            parse_and_validate(result, schema)

    assert cpu_seconds(validate) < 0.5
    assert parse_and_validate(json.dumps({"s": "a" * 45 + "\\n"}), schema) == {
        "s": "a" * 45 + "\\n"
    }


def test_pattern_properties_and_property_names_use_re2_too() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "patternProperties": {CATASTROPHIC: {"type": "integer"}},
        "propertyNames": {"pattern": CATASTROPHIC},
        "additionalProperties": False,
    }
    check_schema(schema)
    key = "a" * 60 + "\n"

    def validate() -> None:
        with pytest.raises(InvalidResult, match="does not match"):
            parse_and_validate(json.dumps({key: 1}), schema)

    assert cpu_seconds(validate) < 0.5
    good = "a" * 40 + "\\n"
    assert parse_and_validate(json.dumps({good: 1}), schema) == {good: 1}
    with pytest.raises(InvalidResult, match="is not of type 'integer'"):
        parse_and_validate(json.dumps({good: "x"}), schema)


def test_additional_properties_beside_pattern_properties_match_with_re2() -> None:
    schema = {
        "type": "object",
        "properties": {"id": {"type": "integer"}},
        "patternProperties": {"^x_[a-z]+$": {"type": "string"}},
        "additionalProperties": False,
    }
    assert parse_and_validate('{"id": 1, "x_note": "n"}', schema) == {"id": 1, "x_note": "n"}
    with pytest.raises(InvalidResult, match="'other' unexpected"):
        parse_and_validate('{"id": 1, "other": 2}', schema)


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        (
            {"type": "string", "pattern": "^(a+)\\1$"},
            "pattern at /pattern cannot be checked in linear time (RE2: invalid escape sequence",
        ),
        (
            {"type": "object", "patternProperties": {"^(?=x)": {}}},
            "patternProperties key '^(?=x)' at /patternProperties cannot be checked in linear",
        ),
        (
            {"type": "object", "propertyNames": {"pattern": "(?<!a)b"}},
            "pattern at /propertyNames/pattern cannot be checked in linear time",
        ),
        (
            {"type": "object", "patternProperties": {"a": {}}, "unevaluatedProperties": False},
            "unevaluatedProperties beside patternProperties is not supported",
        ),
    ],
)
def test_a_pattern_re2_cannot_check_is_refused_where_the_schema_enters(
    schema: dict[str, Any], reason: str
) -> None:
    with pytest.raises(UnsupportedSchema) as refused:
        check_schema(schema)
    assert reason in str(refused.value)


# The splitter ------------------------------------------------------------------------------


class Counting:
    """A tokenizer (4 characters a token, or one per word) that counts what it reads."""

    def __init__(self, per: Callable[[str], int]) -> None:
        self.per = per
        self.characters = 0

    def __call__(self, text: str) -> int:
        self.characters += len(text)
        return self.per(text)


def quarter(text: str) -> int:
    return (len(text) + 3) // 4


def words(text: str) -> int:
    return len(text.split())


HOSTILE_TEXT: dict[str, tuple[str, Callable[[str], int]]] = {
    # The splitter before re-tokenized the rest of a long word per piece (quadratic).
    "one long word": ("x" * 400_000, quarter),
    # ... and the whole chunk again for each word it added (budget x the text).
    "tiny words": ("a " * 200_000, words),
    # Densities that change at every chunk: every guess is wrong once.
    "alternating density": (
        "".join("x" * 4000 + " " if i % 2 else "a " * 2000 for i in range(100)),
        quarter,
    ),
    "a short word before each long one": (("ab " + "y" * 20_000 + " ") * 20, quarter),
}


@pytest.mark.parametrize("budget", [100, 2000])
@pytest.mark.parametrize(("text", "per"), HOSTILE_TEXT.values(), ids=HOSTILE_TEXT.keys())
def test_the_splitter_tokenizes_a_small_multiple_of_the_text(
    text: str, per: Callable[[str], int], budget: int
) -> None:
    count = Counting(per)
    chunks = split_text(text, budget, count)
    assert count.characters <= 10 * len(text), count.characters / len(text)
    assert all(per(chunk) <= budget for chunk in chunks)
    assert "".join(text.split()) == "".join("".join(chunks).split())  # nothing lost
    # Nearly full chunks: not many more than the tokens need.
    assert len(chunks) <= 2 * per(text) / budget + 2 * text.count("ab ") + 2
