"""Pure arithmetic of embeddings: pooling token vectors into one, L2 normalization, and
the token windows and weighted average of an input that is embedded in chunks.

No llama.cpp here: the engine hands these functions the rows it read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

Pooling = Literal["mean", "cls", "last"]
POOLINGS: tuple[Pooling, ...] = ("mean", "cls", "last")
Vector = npt.NDArray[np.float32]

# llama.cpp's enum llama_pooling_type, as GGUF files store it in `<arch>.pooling_type`.
_GGUF_POOLING: dict[str, Pooling] = {"1": "mean", "2": "cls", "3": "last"}


def gguf_pooling(metadata: Mapping[str, str]) -> Pooling | None:
    """The pooling a GGUF declares (`<architecture>.pooling_type`), if one we support."""
    arch = metadata.get("general.architecture", "")
    return _GGUF_POOLING.get(metadata.get(f"{arch}.pooling_type", ""))


def pool(rows: npt.NDArray[np.float32], pooling: Pooling) -> Vector:
    """One vector from a sequence's token vectors (one row per token, in order)."""
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError("pooling needs at least one token vector")
    if pooling == "mean":
        # Summed in float64: thousands of float32 rows lose digits otherwise.
        pooled: Vector = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
        return pooled
    chosen: Vector = np.array(rows[0 if pooling == "cls" else -1], dtype=np.float32)
    return chosen


def l2_normalize(vector: Vector) -> Vector:
    """`vector` with length 1 (a zero vector stays zero: it has no direction)."""
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm == 0.0 or not math.isfinite(norm):
        return vector.astype(np.float32, copy=True)
    return (vector.astype(np.float64) / norm).astype(np.float32)


def chunk_spans(n_tokens: int, size: int) -> list[tuple[int, int]]:
    """[start, end) windows covering `n_tokens` tokens, each at most `size`, as even as can be.

    Even windows (1000 tokens at 512 give 500 and 500, not 512 and 488) keep the last
    chunk from being a scrap that weighs little and says little.
    """
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    if n_tokens <= 0:
        return []
    count = -(-n_tokens // size)
    base, extra = divmod(n_tokens, count)
    spans = []
    start = 0
    for index in range(count):
        end = start + base + (1 if index < extra else 0)
        spans.append((start, end))
        start = end
    return spans


def combine_chunks(vectors: Sequence[Vector], weights: Sequence[int], normalize: bool) -> Vector:
    """The vector of an input embedded in chunks: the chunks' pooled vectors averaged,
    weighted by their tokens, then L2-normalized if asked.

    The chunk vectors are the pooled ones before normalization, so for mean pooling the
    result is the mean over every token of the input (up to the specials each chunk adds).
    """
    if not vectors or len(vectors) != len(weights):
        raise ValueError("one weight per chunk vector, and at least one chunk")
    if any(w <= 0 for w in weights):
        raise ValueError("chunk weights must be positive token counts")
    stacked = np.stack([v.astype(np.float64) for v in vectors])
    average = np.average(stacked, axis=0, weights=np.asarray(weights, dtype=np.float64))
    combined = average.astype(np.float32)
    return l2_normalize(combined) if normalize else combined


def shortest_floats(vector: Vector) -> list[float]:
    """The vector as JSON-ready floats, each the shortest decimal that reads back as the
    same float32 (`0.1`, not `0.10000000149011612`): half the bytes in JSON output."""
    return [float(str(x)) for x in vector.astype(np.float32)]
