"""OpenAI Batch lines for `/v1/embeddings`: the request body checked, and the answer in
OpenAI's `CreateEmbeddingResponse` shape.

Honoured body fields: model, input (a string or a list of strings), encoding_format
(`float`, or `base64`: little-endian float32 bytes, as OpenAI sends them), dimensions
(only the model's own: vectors are not shortened). `user` is ignored. Token arrays as
input are refused: send the text.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from worker.batch.errors import LineError
from worker.llm.pooling import Vector, shortest_floats

EMBEDDINGS = "/v1/embeddings"
# OpenAI's limit on the inputs of one request.
MAX_INPUTS = 2048
EncodingFormat = Literal["float", "base64"]


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated `/v1/embeddings` request body."""

    model: str
    inputs: tuple[str, ...]
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    endpoint: str = EMBEDDINGS


def _invalid(message: str, param: str) -> LineError:
    return LineError("invalid_request", message, param)


def _inputs(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        texts: list[Any] = [value]
    elif isinstance(value, list) and value:
        texts = value
    else:
        raise _invalid("input must be a string or a non-empty list of strings", "input")
    if any(isinstance(t, int | list) and not isinstance(t, bool) for t in texts):
        raise _invalid(
            "token arrays are not supported as input (token ids differ between models): "
            "send the text as a string or a list of strings",
            "input",
        )
    if not all(isinstance(t, str) for t in texts):
        raise _invalid("input must be a string or a list of strings", "input")
    if len(texts) > MAX_INPUTS:
        raise _invalid(f"input has {len(texts)} items; at most {MAX_INPUTS} per request", "input")
    for index, text in enumerate(texts):
        if not text.strip():
            where = "input" if isinstance(value, str) else f"input[{index}]"
            raise _invalid(f"{where} is empty: there is nothing to embed", "input")
    return tuple(texts)


def parse_embedding_request(model: str, body: Mapping[str, Any]) -> EmbeddingRequest:
    """Validate the fields of an embeddings body (`model` already checked)."""
    given = body.get("encoding_format")
    encoding: EncodingFormat
    if given is None or given == "float":
        encoding = "float"
    elif given == "base64":
        encoding = "base64"
    else:
        raise _invalid("encoding_format must be float or base64", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
    ):
        raise _invalid("dimensions must be a positive integer", "dimensions")
    return EmbeddingRequest(model, _inputs(body.get("input")), encoding, dimensions)


def check_dimensions(request: EmbeddingRequest, model: str, dimensions: int) -> None:
    """LineError unless the request asks for the model's own dimensions (or none)."""
    if request.dimensions is not None and request.dimensions != dimensions:
        raise _invalid(
            f"dimensions {request.dimensions} is not supported: model {model!r} gives "
            f"{dimensions}-dimensional vectors, and shortening them is not supported "
            "(leave dimensions out)",
            "dimensions",
        )


def encode(vector: Vector, encoding: EncodingFormat) -> list[float] | str:
    """One vector as OpenAI sends it: floats, or base64 of little-endian float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return shortest_floats(vector)


def decode_base64(text: str) -> Vector:
    """The vector of a base64 `embedding` (what a client does with one)."""
    decoded: Vector = np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)
    return decoded


def embedding_response(
    request: EmbeddingRequest, vectors: Sequence[Vector], tokens: int, model: str
) -> dict[str, Any]:
    """A complete CreateEmbeddingResponse, with usage."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encode(v, request.encoding_format)}
            for index, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
