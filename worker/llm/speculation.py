"""Prompt-lookup drafts: the tokens that followed the sequence's last tokens before.

Summaries and extractions copy names, numbers and phrases from their input. When the
last NGRAM tokens of a sequence (prompt and output so far) occurred earlier, the tokens
that followed them there are a cheap guess at what comes next. The engine decodes the
guess beside the sequence's next token and keeps the part the sampler confirms, token by
token, so the output is exactly what it would be without guessing (see
`BatchedEngine._sample`); a good guess gives several tokens for one decode call.
"""

from __future__ import annotations

# Tokens that must match before a draft is made: 3 keeps drafts rare but good.
NGRAM = 3


class NgramLookup:
    """The token history of one sequence, indexed by its NGRAM-grams."""

    def __init__(self, prompt: list[int], ngram: int = NGRAM) -> None:
        self._n = ngram
        self._tokens: list[int] = []
        # the position just after the latest occurrence of each n-gram (its follower)
        self._after: dict[tuple[int, ...], int] = {}
        for token in prompt:
            self.append(token)

    def append(self, token: int) -> None:
        """Add the sequence's next token; the n-gram it closes is indexed for later."""
        tokens = self._tokens
        n = self._n
        # Index the n-gram that ended before this token: its follower is this token. So
        # the n-gram at the very end is never its own match.
        if len(tokens) >= n:
            self._after[tuple(tokens[-n:])] = len(tokens)
        tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the last
        NGRAM tokens; empty when they never occurred before."""
        tokens = self._tokens
        if limit <= 0 or len(tokens) < self._n:
            return []
        start = self._after.get(tuple(tokens[-self._n :]))
        if start is None:
            return []
        return tokens[start : start + limit]
