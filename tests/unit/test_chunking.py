"""Splitting long inputs into chunks that fit a token budget (pure, with a fake tokenizer)."""

from __future__ import annotations

import random
import re

import pytest

from worker.llm.chunking import group, split_text


def words(text: str) -> int:
    return len(text.split())


def test_paragraphs_are_packed_whole_when_they_fit() -> None:
    text = "one two three\n\nfour five\n\n\nsix seven eight nine"
    assert split_text(text, 5, words) == ["one two three\n\nfour five", "six seven eight nine"]


def test_a_long_paragraph_splits_on_sentences_before_words() -> None:
    text = "A b c d. E f g h. I j k l m n o p q r."
    assert split_text(text, 8, words) == ["A b c d. E f g h.", "I j k l m n o p", "q r."]


def test_a_word_longer_than_the_budget_splits_into_characters() -> None:
    def chars(text: str) -> int:
        return len(text)

    assert split_text("ab abcdefghij", 4, chars) == ["ab", "abcd", "efgh", "ij"]


def test_whole_text_that_fits_is_one_chunk() -> None:
    assert split_text("  short text \n", 100, words) == ["short text"]


@pytest.mark.parametrize("seed", range(20))
def test_every_chunk_fits_and_no_word_is_lost_or_reordered(seed: int) -> None:
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(rng.randint(1, 12)):
        sentences = [
            " ".join(f"w{rng.randint(0, 999)}" for _ in range(rng.randint(1, 30))) + "."
            for _ in range(rng.randint(1, 6))
        ]
        paragraphs.append(" ".join(sentences))
    text = "\n\n".join(paragraphs)
    budget = rng.randint(3, 40)
    chunks = split_text(text, budget, words)
    assert all(words(chunk) <= budget for chunk in chunks)
    assert " ".join(chunks).split() == text.split()
    assert all(chunk == chunk.strip() and chunk for chunk in chunks)


def test_real_tokenizer_shape_counts_are_respected() -> None:
    # A tokenizer where joining can cost more than the parts (like BPE merges break).
    def tokens(text: str) -> int:
        return len(re.findall(r"\w+|[^\w\s]", text)) + text.count("\n")

    text = ("Alpha beta, gamma. " * 30 + "\n\n") * 4
    chunks = split_text(text, 25, tokens)
    assert all(tokens(c) <= 25 for c in chunks)
    assert len(chunks) > 4


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one token"):
        split_text("x", 0, words)


def test_group_packs_consecutive_partials_for_reduce() -> None:
    parts = ["a b", "c d e", "f", "g h i j", "k"]
    assert group(parts, 5, words) == [["a b", "c d e"], ["f", "g h i j"], ["k"]]
