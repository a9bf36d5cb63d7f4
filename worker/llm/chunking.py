"""Splitting a long text into chunks that fit a token budget (pure; the tokenizer is passed in).

Linear in the text: each chunk is guessed from the characters per token seen so far,
cut at the best boundary in its window, and checked with one count of that chunk; a
guess that does not fit is shrunk (a short one grown) by the ratio measured, at most
MAX_TRIES times. So the characters tokenized are a small multiple of the text (measured
on 1 MB: 2.2-3.8x on prose, one long word and tiny words, 7.9x on densities that
alternate every chunk), where the packer before re-tokenized the rest of a long word
per piece and the whole chunk per word added (an 80 KB single word: 111x, growing with
the length; tiny words: 2x the budget in characters per character).

Boundaries are preferred in this order: paragraphs (blank lines), sentences, words, and
only inside a single word longer than the budget, characters. A chunk ends at the best
boundary in the second half of its window (else anywhere in it): the chunks are nearly
full, on natural boundaries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

CountTokens = Callable[[str], int]

_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*"),  # paragraphs
    re.compile(r"(?<=[.!?;:])\s+"),  # sentences
    re.compile(r"\s+"),  # words
)
_NOT_SPACE = re.compile(r"\S")
# Tries per chunk: a guess, then corrections by the measured ratio.
MAX_TRIES = 6
# A window this much longer than the guess: a chunk ends at a boundary before it.
_REACH = 1.1
# A fitting chunk this full is kept without trying a longer one.
_FULL = 0.9


@dataclass
class _Fit:
    end: int
    text: str
    tokens: int


def _cut(text: str, start: int, limit: int) -> int:
    """Where a chunk from `start` ends if it may reach `limit`: the end of the text, the best
    boundary in the window's second half, else the best anywhere in it, else `limit`."""
    if limit >= len(text):
        return len(text)
    for low in (start + (limit - start) // 2, start + 1):
        for pattern in _BOUNDARIES:
            last = None
            for last in pattern.finditer(text, low, limit):  # noqa: B007 - the last one
                pass
            if last is not None and last.start() > start:
                return last.start()
    return limit


def _chunk(text: str, start: int, budget: int, count: CountTokens, per_token: float) -> _Fit:
    """The longest chunk from `start` that fits `budget`, found in at most MAX_TRIES counts."""
    rest = len(text) - start
    window = max(1, min(rest, int(budget * per_token * _REACH) + 1))
    best: _Fit | None = None
    fits_at, fails_at = 0, rest + 1  # window sizes known to fit / not to fit
    for _ in range(MAX_TRIES):
        end = _cut(text, start, start + window)
        piece = text[start:end].rstrip()
        tokens = count(piece)
        if tokens <= budget:
            if best is None or end > best.end:
                best = _Fit(end, piece, tokens)
            if end == len(text) or tokens >= budget * _FULL:
                break
            fits_at = window
            wanted = int(window * budget / max(tokens, 1))
        else:
            fails_at = window
            wanted = int(window * budget / tokens * 0.95)
        wanted = max(fits_at + 1, min(wanted, fails_at - 1, rest))
        if wanted == window or wanted <= fits_at or wanted >= fails_at:
            break
        window = wanted
    while best is None:  # nothing fitted: halve until it does (one character always goes)
        window = max(1, min(window, fails_at) // 2)
        piece = text[start : start + window]
        tokens = count(piece)
        if tokens <= budget or window == 1:
            best = _Fit(start + window, piece, tokens)
        fails_at = window
    return best


def split_text(text: str, budget: int, count_tokens: CountTokens) -> list[str]:
    """Chunks of `text`, each at most `budget` tokens, in order, on the best boundaries.

    Whitespace between chunks is dropped; inside a chunk the text is as it was.
    """
    if budget < 1:
        raise ValueError("budget must be at least one token")
    text = text.strip()
    if not text:
        return []
    total = count_tokens(text)
    if total <= budget:
        return [text]
    per_token = len(text) / total
    chunks: list[str] = []
    start = 0
    while True:
        found = _NOT_SPACE.search(text, start)
        if found is None:
            return chunks
        fit = _chunk(text, found.start(), budget, count_tokens, per_token)
        chunks.append(fit.text)
        if fit.tokens > 0 and len(fit.text) > 0:
            per_token = len(fit.text) / fit.tokens
        start = fit.end


def group(texts: Sequence[str], budget: int, count_tokens: CountTokens) -> list[list[str]]:
    """Consecutive texts in groups whose blank-line-joined text fits `budget` (for reduce)."""
    groups: list[list[str]] = []
    for text in texts:
        if groups and count_tokens("\n\n".join([*groups[-1], text])) <= budget:
            groups[-1].append(text)
        else:
            groups.append([text])
    return groups
