"""Embeddings without a model: pooling and chunk-averaging arithmetic, the /v1/embeddings
request checks and response shape (base64 included), and which pipelines may run on an
embedding model."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai.types import CreateEmbeddingResponse

from worker.batch.embeddings import (
    MAX_INPUTS,
    EmbeddingRequest,
    check_dimensions,
    decode_base64,
    embedding_response,
    encode,
)
from worker.batch.request import LineError, parse_line
from worker.config import load_settings
from worker.llm.pooling import (
    chunk_spans,
    combine_chunks,
    gguf_pooling,
    l2_normalize,
    pool,
    shortest_floats,
)
from worker.pipelines.models import embeds, served_models, startup_model_errors
from worker.pipelines.spec import Pipeline, PipelineError, load_pipeline
from worker.run.kinds.embed import npy_bytes, record_id

ROWS = np.array([[1.0, 0.0, 2.0], [3.0, 4.0, 0.0], [5.0, 2.0, 1.0]], dtype=np.float32)


# Pooling and normalization -------------------------------------------------------------
def test_pooling_takes_the_mean_the_first_or_the_last_token() -> None:
    assert pool(ROWS, "mean").tolist() == [3.0, 2.0, 1.0]
    assert pool(ROWS, "cls").tolist() == [1.0, 0.0, 2.0]
    assert pool(ROWS, "last").tolist() == [5.0, 2.0, 1.0]
    assert pool(ROWS, "mean").dtype == np.float32
    with pytest.raises(ValueError, match="at least one token"):
        pool(np.zeros((0, 3), dtype=np.float32), "mean")


def test_l2_normalization_gives_length_one_and_keeps_a_zero_vector() -> None:
    unit = l2_normalize(np.array([3.0, 4.0], dtype=np.float32))
    assert unit.tolist() == pytest.approx([0.6, 0.8])
    assert float(np.linalg.norm(unit)) == pytest.approx(1.0)
    assert l2_normalize(np.zeros(4, dtype=np.float32)).tolist() == [0.0] * 4


def test_the_pooling_a_gguf_declares() -> None:
    assert gguf_pooling({"general.architecture": "bert", "bert.pooling_type": "2"}) == "cls"
    assert gguf_pooling({"general.architecture": "qwen3", "qwen3.pooling_type": "3"}) == "last"
    assert gguf_pooling({"general.architecture": "nomic-bert", "nomic-bert.pooling_type": "1"})
    # Gemma 3 declares none; rank (4) is not an embedding.
    assert gguf_pooling({"general.architecture": "gemma3"}) is None
    assert gguf_pooling({"general.architecture": "bert", "bert.pooling_type": "4"}) is None


# Chunking ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n_tokens", "size", "spans"),
    [
        (0, 4, []),
        (3, 4, [(0, 3)]),
        (8, 4, [(0, 4), (4, 8)]),
        (9, 4, [(0, 3), (3, 6), (6, 9)]),
        (1000, 512, [(0, 500), (500, 1000)]),
    ],
)
def test_chunks_are_even_windows_within_the_size(
    n_tokens: int, size: int, spans: list[tuple[int, int]]
) -> None:
    assert chunk_spans(n_tokens, size) == spans
    assert all(end - start <= size for start, end in spans)


def test_chunk_vectors_average_weighted_by_tokens_then_normalize() -> None:
    a = np.array([1.0, 0.0], dtype=np.float32)
    b = np.array([0.0, 1.0], dtype=np.float32)
    raw = combine_chunks([a, b], [3, 1], normalize=False)
    assert raw.tolist() == pytest.approx([0.75, 0.25])
    unit = combine_chunks([a, b], [3, 1], normalize=True)
    assert unit.tolist() == pytest.approx(
        [0.75 / np.hypot(0.75, 0.25), 0.25 / np.hypot(0.75, 0.25)]
    )
    # For mean pooling, averaging the chunks' means by their tokens is the mean of all tokens.
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    chunks = [pool(rows[s:e], "mean") for s, e in chunk_spans(10, 4)]
    weights = [e - s for s, e in chunk_spans(10, 4)]
    assert np.allclose(combine_chunks(chunks, weights, normalize=False), pool(rows, "mean"))
    with pytest.raises(ValueError, match="one weight per chunk"):
        combine_chunks([a], [1, 2], normalize=True)


def test_vectors_are_written_as_the_shortest_floats_that_read_back() -> None:
    vector = np.array([0.1, -1.5e-7, 3.0, 1 / 3], dtype=np.float32)
    floats = shortest_floats(vector)
    assert floats[0] == 0.1 and floats[2] == 3.0
    assert np.array_equal(np.array(floats, dtype=np.float32), vector)
    assert len(json.dumps(floats)) < len(json.dumps(vector.tolist()))


# Outputs -------------------------------------------------------------------------------
def test_npy_output_is_float32_rows_that_numpy_reads() -> None:
    vectors = [np.array([1.0, 2.0], dtype=np.float32), np.array([3.0, 4.5], dtype=np.float32)]
    loaded = np.load(io.BytesIO(npy_bytes(vectors, 2)), allow_pickle=False)
    assert loaded.dtype == np.dtype("<f4") and loaded.shape == (2, 2)
    assert loaded.tolist() == [[1.0, 2.0], [3.0, 4.5]]
    empty = np.load(io.BytesIO(npy_bytes([], 7)), allow_pickle=False)
    assert empty.shape == (0, 7)


def test_a_record_id_is_its_id_field_when_it_is_a_plain_value() -> None:
    assert record_id({"id": "a1", "text": "x"}) == "a1"
    assert record_id({"id": 7}) == 7
    assert record_id({"id": ""}) is None
    assert record_id({"id": True}) is None
    assert record_id({"id": {"nested": 1}}) is None
    assert record_id({"text": "x"}) is None
    assert record_id(None) is None


# /v1/embeddings requests ---------------------------------------------------------------
def parsed(**body: Any) -> EmbeddingRequest:
    body.setdefault("model", "text-embedding-3-small")
    request = parse_line("/v1/embeddings", body)
    assert isinstance(request, EmbeddingRequest)
    return request


def test_embedding_requests_take_a_string_or_a_list_of_strings() -> None:
    one = parsed(input="hello")
    assert one.inputs == ("hello",) and one.encoding_format == "float"
    assert one.dimensions is None
    many = parsed(input=["a", "b"], encoding_format="base64", dimensions=640, user="u1")
    assert many.inputs == ("a", "b") and many.encoding_format == "base64"
    assert many.dimensions == 640


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"input": [1, 2, 3]}, "input", "token arrays are not supported"),
        ({"input": [[1, 2], [3]]}, "input", "token arrays are not supported"),
        ({"input": []}, "input", "non-empty list"),
        ({}, "input", "must be a string"),
        ({"input": ["ok", 5.5]}, "input", "a list of strings"),
        ({"input": ["ok", " "]}, "input", "input[1] is empty"),
        ({"input": ""}, "input", "input is empty"),
        ({"input": ["x"] * (MAX_INPUTS + 1)}, "input", f"at most {MAX_INPUTS}"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "float or base64"),
        ({"input": "x", "dimensions": 0}, "dimensions", "positive integer"),
        ({"input": "x", "dimensions": "640"}, "dimensions", "positive integer"),
        ({"input": "x", "dimensions": True}, "dimensions", "positive integer"),
    ],
)
def test_bad_embedding_requests_name_the_field(
    body: dict[str, Any], param: str, message: str
) -> None:
    with pytest.raises(LineError) as info:
        parsed(**body)
    assert info.value.code == "invalid_request"
    assert info.value.param == param
    assert message in info.value.message


def test_dimensions_other_than_the_models_are_refused_clearly() -> None:
    check_dimensions(parsed(input="x"), "emb", 640)
    check_dimensions(parsed(input="x", dimensions=640), "emb", 640)
    with pytest.raises(LineError) as info:
        check_dimensions(parsed(input="x", dimensions=256), "emb", 640)
    assert info.value.code == "invalid_request" and info.value.param == "dimensions"
    assert "dimensions 256 is not supported: model 'emb' gives 640-dimensional" in str(info.value)


def test_base64_is_little_endian_float32_as_openai_sends_it() -> None:
    vector = np.array([0.5, -2.0, 1e-3], dtype=np.float32)
    text = encode(vector, "base64")
    assert isinstance(text, str)
    raw = base64.b64decode(text)
    assert raw == b"\x00\x00\x00?\x00\x00\x00\xc0o\x12\x83:"
    assert np.array_equal(decode_base64(text), vector)
    assert encode(vector, "float") == [0.5, -2.0, 0.001]


def test_the_response_is_a_create_embedding_response() -> None:
    vectors = [np.array([0.6, 0.8], dtype=np.float32), np.array([1.0, 0.0], dtype=np.float32)]
    body = embedding_response(parsed(input=["a", "b"]), vectors, 7, "emb")
    response = CreateEmbeddingResponse.model_validate(body)
    assert response.object == "list" and response.model == "emb"
    assert [d.index for d in response.data] == [0, 1]
    assert response.data[0].embedding == pytest.approx([0.6, 0.8])
    assert response.usage.prompt_tokens == 7 and response.usage.total_tokens == 7
    encoded = embedding_response(parsed(input="a", encoding_format="base64"), vectors[:1], 3, "e")
    assert isinstance(encoded["data"][0]["embedding"], str)
    assert decode_base64(encoded["data"][0]["embedding"]).tolist() == pytest.approx([0.6, 0.8])


# Pipelines on embedding models ---------------------------------------------------------
def embed_settings(tmp_path: Path) -> Any:
    return load_settings(
        data_dir=tmp_path,
        models={"emb": {"path": str(tmp_path / "e.gguf"), "kind": "embed", "pooling": "mean"}},
        model_aliases={"text-embedding-3-small": "emb"},
    )


def test_an_embedding_pipeline_needs_no_prompt_and_may_chunk_without_a_reduce_prompt(
    tmp_path: Path,
) -> None:
    settings = embed_settings(tmp_path)
    pipelines = {
        "index": Pipeline(name="index", model="emb", long_input="chunk", output_format="npy"),
        "alias": Pipeline(name="alias", model="text-embedding-3-small", normalize=False),
        "summarize": Pipeline(name="summarize", prompt="Sum up: {{ input }}"),
        "batch": Pipeline(name="batch", reader="openai-batch"),
    }
    assert startup_model_errors(pipelines, settings) == []
    assert embeds(settings, pipelines["index"]) and embeds(settings, pipelines["alias"])
    assert not embeds(settings, pipelines["summarize"]) and not embeds(settings, pipelines["batch"])
    # A batch pipeline's lines may name any model: every model of the table is served.
    assert set(served_models(pipelines, settings)) == {"emb", settings.model}
    del pipelines["batch"], pipelines["index"], pipelines["alias"]
    assert served_models(pipelines, settings) == [settings.model]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "Embed: {{ input }}"}, "field prompt: model 'emb' is an embedding model"),
        ({"json_schema": {"type": "object"}, "output_format": "json"}, "field json_schema"),
        ({"mode": "chat"}, "field mode"),
        ({"output_format": "markdown"}, "field output_format"),
        ({"generation": {"max_tokens": 5}}, "field generation"),
    ],
)
def test_a_generation_pipeline_on_an_embedding_model_is_refused(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    pipeline = Pipeline.model_validate({"name": "p", "model": "emb", **fields})
    errors = startup_model_errors({"p": pipeline}, embed_settings(tmp_path))
    assert len(errors) == 1
    assert errors[0].startswith("pipeline p: ") and message in errors[0]
    assert "prompts, generation and schemas are for text generation" in errors[0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"pooling": "mean"}, "field pooling: model 'gemma-3-270m' generates text"),
        ({"normalize": False}, "field normalize"),
        ({"input_prefix": "query: "}, "field input_prefix"),
        ({"output_format": "npy"}, "field output_format"),
        ({"long_input": "chunk"}, 'long_input = "chunk" needs a reduce_prompt'),
    ],
)
def test_an_embedding_pipeline_on_a_generation_model_is_refused(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    pipeline = Pipeline.model_validate({"name": "p", **fields})
    errors = startup_model_errors({"p": pipeline}, embed_settings(tmp_path))
    assert len(errors) == 1 and message in errors[0], errors


def test_a_pipeline_file_mixing_both_kinds_of_fields_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('model = "emb"\nprompt = "x {{ input }}"\npooling = "mean"\n')
    with pytest.raises(PipelineError, match="fields prompt are for text generation and pooling"):
        load_pipeline(path)
    path.write_text('model = "emb"\npooling = "cls"\nlong_input = "chunk"\n')
    assert load_pipeline(path).pooling == "cls"
