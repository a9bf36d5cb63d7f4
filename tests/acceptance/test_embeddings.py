"""Embeddings through the real daemon: the default Gemma serves as the generation model
and, a second time from the same GGUF, as an embedding model (kind "embed", mean
pooling). A file, a records file (JSON Lines and npy), a table row, and an OpenAI Batch
file mixing chat, completion and embedding lines; a re-dropped file is not embedded again.

One daemon serves every case of this module."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from tests.acceptance.daemon import Daemon, daemon_env, db_rows, write_pipelines

pytestmark = pytest.mark.timeout(300)

DIMENSIONS = 640  # Gemma 3 270M's hidden size
TEXT = "The city council approved the new public library; it opens in March."
OTHER = "Quarterly revenue of the logistics company rose by four percent."


@dataclass(frozen=True)
class Setup:
    root: Path
    data: Path
    daemon: Daemon


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, gguf: Path) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("embeddings")
    data = root / "data"
    config = root / "config.toml"
    config.write_text(
        f'[models.emb]\npath = "{gguf}"\nkind = "embed"\npooling = "mean"\n\n'
        '[model_aliases]\n"text-embedding-3-small" = "emb"\n"gpt-4o-mini" = "gemma-3-270m"\n'
    )
    pipelines = write_pipelines(
        root / "pipelines",
        index='model = "emb"\n',
        vectors='model = "emb"\noutput_format = "npy"\n',
        batch='reader = "openai-batch"\n[generation]\nmax_tokens = 4\ntemperature = 0.0\n',
    )
    env = daemon_env(
        data,
        gguf.parent,
        config=config,
        pipelines_dir=pipelines,
        # Small contexts: the embedding context's batch holds every token's logits
        # (Gemma's 262k vocabulary), so a short one keeps the test daemon lean.
        n_ctx=256,
        n_batch=128,
    )
    daemon = Daemon(env, root / "daemon.log")
    try:
        daemon.wait_for("daemon.ready", timeout=120)
        yield Setup(root, data, daemon)
    finally:
        daemon.kill()


def drop(setup: Setup, pipeline: str, name: str, data: bytes) -> None:
    inbox = setup.data / "inbox" / pipeline
    inbox.mkdir(parents=True, exist_ok=True)
    part = inbox / f".{name}.part"
    part.write_bytes(data)
    part.rename(inbox / name)


def wait_file(path: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path} within {timeout}s"
        time.sleep(0.2)
    return path


def wait_job(setup: Setup, where: str, *params: object, timeout: float = 120) -> tuple[Any, ...]:
    """The first job row matching `where` once it is final: (id, status, result, error, tokens)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = db_rows(
            setup.data,
            "SELECT id, status, result_text, error, prompt_tokens FROM jobs WHERE "
            + where
            + " ORDER BY id",
            *params,
        )
        if rows and rows[-1][1] in ("succeeded", "failed", "dead"):
            return rows[-1]
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)


def unit(vector: Any) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float32)
    assert array.shape == (DIMENSIONS,)
    assert abs(float(np.linalg.norm(array)) - 1.0) < 1e-4
    return array


def test_a_file_gets_its_embedding_json_and_a_redrop_is_not_embedded_again(
    served: Setup,
) -> None:
    drop(served, "index", "library.txt", TEXT.encode())
    output = wait_file(served.data / "outbox" / "index" / "library.txt.embedding.json")
    document = json.loads(output.read_text())
    assert document["model"] == "emb" and document["dimensions"] == DIMENSIONS
    assert document["tokens"] > 10
    first = unit(document["embedding"])
    done = wait_file(served.data / "done" / "index" / "library.txt")
    # The same bytes again, as a fresh copy: a new job that reuses the earlier vector.
    output.unlink()
    again = served.root / "library.txt"
    shutil.copyfile(done, again)
    done.unlink()
    drop(served, "index", "library.txt", again.read_bytes())
    wait_file(output)
    # The output is published before the row is final: wait for the row, not the file.
    wait_job(served, "source_path = ?", "index/library.txt")
    rows = db_rows(
        served.data,
        "SELECT status, prompt_tokens FROM jobs WHERE source_path = ? ORDER BY id",
        "index/library.txt",
    )
    assert len(rows) == 2 and rows[0] == ("succeeded", document["tokens"])
    assert rows[1] == ("succeeded", 0)
    assert np.array_equal(unit(json.loads(output.read_text())["embedding"]), first)
    reused = [e for e in served.daemon.events() if e.get("event") == "embedding.reused"]
    assert len(reused) == 1


def test_a_records_file_gives_jsonl_and_npy_outputs(served: Setup) -> None:
    records = [{"id": "lib", "text": TEXT}, {"id": "rev", "text": OTHER}, {"text": TEXT}]
    drop(served, "index", "docs.jsonl", "\n".join(json.dumps(r) for r in records).encode())
    drop(served, "vectors", "docs.csv", f'id,text\nlib,"{TEXT}"\nrev,"{OTHER}"\n'.encode())
    jsonl = wait_file(served.data / "outbox" / "index" / "docs.jsonl.embeddings.jsonl")
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert [(x["index"], x.get("id")) for x in lines] == [(0, "lib"), (1, "rev"), (2, None)]
    vectors = [unit(x["embedding"]) for x in lines]
    # The same text gives the same vector whatever runs beside it; another text differs.
    assert np.allclose(vectors[0], vectors[2], atol=1e-4)
    assert float(vectors[0] @ vectors[1]) < 0.99
    ids = wait_file(served.data / "outbox" / "vectors" / "docs.csv.embeddings.ids.jsonl")
    matrix = np.load(
        io.BytesIO((served.data / "outbox" / "vectors" / "docs.csv.embeddings.npy").read_bytes())
    )
    assert matrix.dtype == np.dtype("<f4") and matrix.shape == (2, DIMENSIONS)
    assert [json.loads(x) for x in ids.read_text().splitlines()] == [
        {"index": 0, "id": "lib", "row": 0},
        {"index": 1, "id": "rev", "row": 1},
    ]
    assert np.allclose(matrix[0], vectors[0], atol=1e-4)
    assert np.allclose(matrix[1], vectors[1], atol=1e-4)


def test_a_table_row_gets_its_vector_and_an_over_long_one_fails_alone(served: Setup) -> None:
    db_rows(
        served.data,
        "INSERT INTO jobs (pipeline, input_text) VALUES ('index', ?), ('index', ?)",
        OTHER,
        " ".join(["word"] * 400),
    )
    _, status, result, _, tokens = wait_job(served, "source = 'table' AND input_text = ?", OTHER)
    assert status == "succeeded" and tokens > 5
    unit(json.loads(result))
    _, status, _, error, _ = wait_job(served, "source = 'table' AND input_text LIKE 'word word%'")
    assert status == "failed"
    assert "the embedding model's context allows 256 (n_ctx)" in error


def test_a_batch_file_mixing_chat_completion_and_embeddings_parses_as_openai_types(
    served: Setup,
) -> None:
    def line(custom_id: str, url: str, **body: Any) -> str:
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})

    hello = [{"role": "user", "content": "Hi"}]
    lines = [
        line("c", "/v1/chat/completions", model="gpt-4o-mini", messages=hello),
        line("e", "/v1/embeddings", model="text-embedding-3-small", input=[TEXT, OTHER]),
        line("p", "/v1/completions", model="gemma-3-270m", prompt="Once upon a time"),
        line("b", "/v1/embeddings", model="emb", input=TEXT, encoding_format="base64"),
        line("d", "/v1/embeddings", model="emb", input=TEXT, dimensions=256),
    ]
    drop(served, "batch", "mixed.jsonl", "\n".join(lines).encode())
    folder = served.data / "outbox" / "batch"
    deadline = time.monotonic() + 120
    while not list(folder.glob("mixed.jsonl.*.errors.jsonl")):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    (output,) = folder.glob("mixed.jsonl.*.output.jsonl")
    bodies = {x["custom_id"]: x["response"]["body"] for x in map(json.loads, output.open())}
    assert set(bodies) == {"c", "e", "p", "b"}
    ChatCompletion.model_validate(bodies["c"])
    Completion.model_validate(bodies["p"])
    embedded = CreateEmbeddingResponse.model_validate(bodies["e"])
    assert [d.index for d in embedded.data] == [0, 1]
    assert embedded.usage.prompt_tokens == embedded.usage.total_tokens > 20
    first = unit(embedded.data[0].embedding)
    raw = np.frombuffer(base64.b64decode(bodies["b"]["data"][0]["embedding"]), "<f4")
    assert np.allclose(unit(raw), first, atol=1e-4)
    (errors,) = folder.glob("mixed.jsonl.*.errors.jsonl")
    (failed,) = [json.loads(x) for x in errors.read_text().splitlines()]
    assert failed["custom_id"] == "d" and failed["response"]["status_code"] == 400
    error = failed["response"]["body"]["error"]
    assert error["code"] == "invalid_request" and error["param"] == "dimensions"
    assert "640-dimensional" in error["message"]
