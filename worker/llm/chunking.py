"""Splitting a long text into chunks that fit a token budget (pure; the tokenizer is passed in).

Boundaries are preferred in this order: paragraphs (blank lines), sentences, words,
and only for a single word longer than the budget, characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CountTokens = Callable[[str], int]

_PARAGRAPHS = re.compile(r"\n[ \t]*\n+")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_WORDS = re.compile(r"\s+")


@dataclass(frozen=True)
class _Piece:
    text: str
    joiner: str  # what goes between the previous piece and this one


def _split_long(text: str, budget: int, count: CountTokens) -> list[_Piece]:
    """One paragraph as pieces that each fit: sentences, words, or character runs.

    The first piece's joiner is a paragraph break; later ones a space (or nothing
    between the character runs of one long word).
    """
    if count(text) <= budget:
        return [_Piece(text, "\n\n")]
    for pattern in (_SENTENCE_END, _WORDS):
        parts = [p for p in pattern.split(text) if p.strip()]
        if len(parts) > 1:
            pieces = [
                _Piece(sub.text, " " if sub.joiner == "\n\n" else sub.joiner)
                for part in parts
                for sub in _split_long(part, budget, count)
            ]
            return [_Piece(pieces[0].text, "\n\n"), *pieces[1:]]
    return _split_word(text, budget, count)


def _split_word(text: str, budget: int, count: CountTokens) -> list[_Piece]:
    """A single word longer than the budget: the longest prefixes that fit, in turn."""
    pieces: list[_Piece] = []
    start = 0
    while start < len(text):
        low, high = start + 1, len(text)
        while low < high:  # the largest end with count(text[start:end]) <= budget
            mid = (low + high + 1) // 2
            if count(text[start:mid]) <= budget:
                low = mid
            else:
                high = mid - 1
        pieces.append(_Piece(text[start:low], "" if pieces else "\n\n"))
        start = low
    return pieces


def split_text(text: str, budget: int, count_tokens: CountTokens) -> list[str]:
    """Chunks of `text`, each at most `budget` tokens, in order, on the best boundaries.

    Packing is greedy: a chunk takes pieces until the next one would not fit.
    """
    if budget < 1:
        raise ValueError("budget must be at least one token")
    pieces: list[_Piece] = []
    for paragraph in _PARAGRAPHS.split(text.strip()):
        if paragraph.strip():
            pieces.extend(_split_long(paragraph.strip(), budget, count_tokens))
    return pack([p.text for p in pieces], [p.joiner for p in pieces], budget, count_tokens)


def pack(
    texts: Sequence[str], joiners: Sequence[str], budget: int, count_tokens: CountTokens
) -> list[str]:
    """Greedily join consecutive texts (each already within budget) into chunks that fit."""
    chunks: list[str] = []
    current = ""
    for text, joiner in zip(texts, joiners, strict=True):
        candidate = f"{current}{joiner}{text}" if current else text
        if not current or count_tokens(candidate) <= budget:
            current = candidate
        else:
            chunks.append(current)
            current = text
    if current:
        chunks.append(current)
    return chunks


def group(texts: Sequence[str], budget: int, count_tokens: CountTokens) -> list[list[str]]:
    """Consecutive texts in groups whose blank-line-joined text fits `budget` (for reduce)."""
    groups: list[list[str]] = []
    for text in texts:
        if groups and count_tokens("\n\n".join([*groups[-1], text])) <= budget:
            groups[-1].append(text)
        else:
            groups.append([text])
    return groups
