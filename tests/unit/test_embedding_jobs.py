"""Embedding jobs through the runner with a fake embedder over a real SQLite store: the
output of a file, a records file (JSON Lines and npy), a row, a sweep-free re-drop,
and OpenAI Batch files mixing chat, completion and embedding lines."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from tests.fakes import FakeEngine
from tests.harness import Runner
from worker.batch.embeddings import decode_base64
from worker.config import Settings, load_settings
from worker.errors import PromptTooLong
from worker.io.files import FileRef, content_digest, file_key
from worker.llm.embedders import Embedders
from worker.llm.embedding import Embeddings
from worker.llm.pooling import Pooling, Vector, l2_normalize
from worker.pipelines.spec import Pipeline
from worker.queue.jobs import JobStore, NewJob
from worker.run.stop import StopFlags

DIMS = 4


class FakeEmbedder:
    """Vectors from a hash of the text (so equal texts give equal vectors); words are
    tokens, a BOS included; over `n_ctx` tokens is PromptTooLong, as the real engine."""

    pooling: Pooling = "mean"
    normalize = True
    load_seconds = 0.0

    def __init__(self, n_ctx: int = 50, dimensions: int = DIMS) -> None:
        self.n_ctx = n_ctx
        self.dimensions = dimensions
        self.texts: list[str] = []
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    def vector(self, text: str) -> Vector:
        digest = hashlib.sha256(text.encode()).digest()
        return np.frombuffer(digest[: self.dimensions], dtype=np.uint8).astype(np.float32) + 1

    def embed(
        self,
        texts: Sequence[str],
        should_stop: Callable[[], bool],
        *,
        normalize: bool | None = None,
        pooling: Pooling | None = None,
        long_input: str = "fail",
    ) -> Embeddings:
        for index, text in enumerate(texts):
            if self.count_tokens(text) > self.n_ctx and long_input == "fail":
                where = f"input {index}: " if len(texts) > 1 else ""
                raise PromptTooLong(f"{where}input is {self.count_tokens(text)} tokens")
        with self._lock:
            self.texts.extend(texts)
        unit = self.normalize if normalize is None else normalize
        vectors = [l2_normalize(self.vector(t)) if unit else self.vector(t) for t in texts]
        return Embeddings(vectors, [self.count_tokens(t) for t in texts])

    def close(self) -> None:
        pass


PIPELINES = {
    "index": Pipeline(name="index", model="emb"),
    "npy": Pipeline(name="npy", model="emb", output_format="npy", input_prefix="passage: "),
    "batch": Pipeline(name="batch", reader="openai-batch"),
}


@pytest.fixture
def emb_settings(tmp_path: Path, settings: Settings) -> Settings:
    return load_settings(
        **{
            **settings.model_dump(exclude={"models", "model_aliases"}),
            "models": {"emb": {"path": str(tmp_path / "e.gguf"), "kind": "embed"}},
            "model_aliases": {"text-embedding-3-small": "emb", "gpt-4o-mini": "gemma-3-270m"},
        }
    )


def drop(settings: Settings, store: JobStore, pipeline: str, name: str, data: bytes) -> int:
    folder = settings.folder("inbox", pipeline)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    info = (folder / name).stat()
    ref = FileRef(pipeline, name)
    key = file_key(ref, info.st_size, info.st_mtime_ns, content_digest(data))
    job_id = store.enqueue(
        NewJob(pipeline, source="file", source_path=ref.source_path, idempotency_key=key)
    )
    assert job_id is not None
    return job_id


def run(settings: Settings, store: JobStore, embedder: FakeEmbedder, engine: FakeEngine) -> None:
    embedders = Embedders({"emb": embedder})
    runner = Runner(
        settings,
        store,
        engine,
        PIPELINES,
        "w1",
        StopFlags(),
        threading.Event(),
        embedders=embedders,
    )
    runner.run(once=True)


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


def test_a_file_becomes_one_embedding_json_and_a_redrop_is_not_embedded_again(
    emb_settings: Settings, store: JobStore, embedder: FakeEmbedder
) -> None:
    text = "The library opens in March."
    first = drop(emb_settings, store, "index", "doc.txt", text.encode())
    run(emb_settings, store, embedder, FakeEngine())
    output = emb_settings.folder("outbox", "index") / "doc.txt.embedding.json"
    document = json.loads(output.read_text())
    assert list(document) == ["model", "dimensions", "tokens", "input_sha256", "embedding"]
    assert document["model"] == "emb" and document["dimensions"] == DIMS
    assert document["tokens"] == 6
    assert document["input_sha256"] == content_digest(text.encode())
    assert np.allclose(document["embedding"], l2_normalize(embedder.vector(text)))
    assert (emb_settings.folder("done", "index") / "doc.txt").exists()
    job = store.get(first)
    assert job is not None and job.status == "succeeded" and job.prompt_tokens == 6
    assert embedder.texts == [text]
    # The same bytes dropped again (a fresh copy: new mtime, new job) are not embedded.
    (emb_settings.folder("done", "index") / "doc.txt").unlink()
    output.unlink()
    second = drop(emb_settings, store, "index", "doc.txt", text.encode())
    os.utime(emb_settings.folder("inbox", "index") / "doc.txt", ns=(1, 1))
    run(emb_settings, store, embedder, FakeEngine())
    again = store.get(second)
    assert again is not None and again.status == "succeeded" and again.prompt_tokens == 0
    assert json.loads(output.read_text()) == document
    assert embedder.texts == [text]
    # Changed bytes are embedded.
    drop(emb_settings, store, "index", "doc.txt", b"Something else entirely.")
    run(emb_settings, store, embedder, FakeEngine())
    assert embedder.texts == [text, "Something else entirely."]


def test_a_records_file_gives_one_jsonl_line_per_record_in_order(
    emb_settings: Settings, store: JobStore, embedder: FakeEmbedder
) -> None:
    too_long = " ".join(["word"] * 60)
    lines = [
        json.dumps({"id": "a", "text": "first record"}),
        "{not json",
        json.dumps({"text": "no id here"}),
        json.dumps({"id": 9, "text": too_long}),
    ]
    parent = drop(emb_settings, store, "index", "docs.jsonl", "\n".join(lines).encode())
    run(emb_settings, store, embedder, FakeEngine())
    job = store.get(parent)
    assert job is not None and job.status == "succeeded"
    assert json.loads(job.result_text or "")["embedded"] == 2
    output = emb_settings.folder("outbox", "index") / "docs.jsonl.embeddings.jsonl"
    got = [json.loads(x) for x in output.read_text().splitlines()]
    assert [list(x) for x in got] == [
        ["index", "id", "embedding"],
        ["index", "error", "embedding"],
        ["index", "embedding"],
        ["index", "id", "error", "embedding"],
    ]
    assert [x["index"] for x in got] == [0, 1, 2, 3]
    assert got[0]["id"] == "a" and got[3]["id"] == 9
    assert np.allclose(got[0]["embedding"], l2_normalize(embedder.vector("first record")))
    assert np.allclose(got[2]["embedding"], l2_normalize(embedder.vector("no id here")))
    assert got[1]["embedding"] is None and "not valid JSON" in got[1]["error"]
    # The over-long record failed alone.
    assert got[3]["embedding"] is None and "input is 61 tokens" in got[3]["error"]


def test_a_records_file_with_npy_output_gives_float32_rows_beside_an_ids_file(
    emb_settings: Settings, store: JobStore, embedder: FakeEmbedder
) -> None:
    data = b"id,text\nr1,alpha beta\nr2,x,extra\nr3,gamma\n"
    drop(emb_settings, store, "npy", "rows.csv", data)
    run(emb_settings, store, embedder, FakeEngine())
    folder = emb_settings.folder("outbox", "npy")
    matrix = np.load(io.BytesIO((folder / "rows.csv.embeddings.npy").read_bytes()))
    assert matrix.dtype == np.dtype("<f4") and matrix.shape == (2, DIMS)
    # The pipeline's input_prefix is part of what is embedded.
    assert np.allclose(matrix[0], l2_normalize(embedder.vector("passage: alpha beta")))
    assert np.allclose(matrix[1], l2_normalize(embedder.vector("passage: gamma")))
    ids = [json.loads(x) for x in (folder / "rows.csv.embeddings.ids.jsonl").open()]
    assert [(x["index"], x.get("id"), x["row"]) for x in ids] == [
        (0, "r1", 0),
        (1, None, None),
        (2, "r3", 1),
    ]
    assert "3 fields" in ids[1]["error"]
    assert not (folder / "rows.csv.embeddings.jsonl").exists()


def test_a_table_row_gets_its_vector_as_json(
    emb_settings: Settings, store: JobStore, embedder: FakeEmbedder
) -> None:
    row = store.enqueue(NewJob("index", input_text="a row to index"))
    long_row = store.enqueue(NewJob("index", input_text=" ".join(["w"] * 80)))
    run(emb_settings, store, embedder, FakeEngine())
    job = store.get(row or 0)
    assert job is not None and job.status == "succeeded"
    vector = json.loads(job.result_text or "")
    assert np.allclose(vector, l2_normalize(embedder.vector("a row to index")))
    assert job.prompt_tokens == 5 and job.completion_tokens == 0
    failed = store.get(long_row or 0)
    assert failed is not None and failed.status == "failed"
    assert "input is 81 tokens" in (failed.error or "")


def request(custom_id: str, url: str, **body: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_a_batch_file_mixes_chat_completion_and_embedding_lines(
    emb_settings: Settings, store: JobStore, embedder: FakeEmbedder
) -> None:
    chat = [{"role": "user", "content": "Hi"}]
    lines = [
        request("chat", "/v1/chat/completions", model="gpt-4o-mini", messages=chat),
        request("emb", "/v1/embeddings", model="text-embedding-3-small", input="hello world"),
        request("cmpl", "/v1/completions", model="gemma-3-270m", prompt="Once"),
        request(
            "emb64",
            "/v1/embeddings",
            model="emb",
            input=["one", "two three"],
            encoding_format="base64",
            dimensions=DIMS,
        ),
        request("dims", "/v1/embeddings", model="emb", input="x", dimensions=256),
        request("gen-model", "/v1/embeddings", model="gemma-3-270m", input="x"),
        request("emb-model", "/v1/chat/completions", model="emb", messages=chat),
        request("tokens", "/v1/embeddings", model="emb", input=[[1, 2, 3]]),
        request("long", "/v1/embeddings", model="emb", input=" ".join(["w"] * 70)),
    ]
    drop(emb_settings, store, "batch", "mixed.jsonl", "\n".join(lines).encode())
    run(emb_settings, store, embedder, FakeEngine(lambda prompt: " ok"))
    folder = emb_settings.folder("outbox", "batch")
    (output,) = folder.glob("mixed.jsonl.*.output.jsonl")
    (errors,) = folder.glob("mixed.jsonl.*.errors.jsonl")
    answers = {x["custom_id"]: x["response"]["body"] for x in map(json.loads, output.open())}
    assert set(answers) == {"chat", "emb", "cmpl", "emb64"}
    assert ChatCompletion.model_validate(answers["chat"]).choices[0].message.content == "ok"
    assert Completion.model_validate(answers["cmpl"]).choices[0].text == " ok"
    emb = CreateEmbeddingResponse.model_validate(answers["emb"])
    assert emb.model == "emb" and emb.usage.prompt_tokens == 3
    assert np.allclose(emb.data[0].embedding, l2_normalize(embedder.vector("hello world")))
    emb64 = answers["emb64"]
    assert [d["index"] for d in emb64["data"]] == [0, 1]
    assert emb64["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    second = decode_base64(emb64["data"][1]["embedding"])
    assert np.allclose(second, l2_normalize(embedder.vector("two three")))
    # Failed requests are HTTP-level errors, as OpenAI's error file has them.
    failed = {
        x["custom_id"]: x["response"]["body"]["error"] for x in map(json.loads, errors.open())
    }
    statuses = {
        x["custom_id"]: x["response"]["status_code"] for x in map(json.loads, errors.open())
    }
    assert statuses == {"dims": 400, "gen-model": 400, "emb-model": 400, "tokens": 400, "long": 400}
    assert failed["dims"]["param"] == "dimensions"
    assert failed["dims"]["code"] == "invalid_request"
    assert "dimensions 256 is not supported" in failed["dims"]["message"]
    assert failed["gen-model"]["code"] == "invalid_request"
    assert (
        "generates text; /v1/embeddings needs an embedding model"
        in (failed["gen-model"]["message"])
    )
    assert (
        "is an embedding model: send its requests to /v1/embeddings"
        in (failed["emb-model"]["message"])
    )
    assert failed["tokens"]["code"] == "invalid_request"
    assert failed["long"]["code"] == "context_length_exceeded"


def test_embeddings_and_batch_results_go_to_the_submitters_folder_with_outputs_per_submitter(
    emb_settings: Settings, store: JobStore, embedder: FakeEmbedder
) -> None:
    settings = emb_settings.model_copy(update={"outputs_per_submitter": True})
    uid = str(os.getuid())  # the inputs' owner
    drop(settings, store, "index", "doc.txt", b"one document")
    drop(settings, store, "index", "docs.jsonl", json.dumps({"text": "a record"}).encode())
    drop(settings, store, "npy", "rows.jsonl", json.dumps({"text": "a row"}).encode())
    line = request("emb", "/v1/embeddings", model="emb", input="hello")
    drop(settings, store, "batch", "lines.jsonl", line.encode())
    run(settings, store, embedder, FakeEngine())
    assert [job.status for job in store.list_jobs() if job.parent_id is None] == ["succeeded"] * 4
    # OpenAI Batch result files too: all of a submitter's results in one folder.
    batch = settings.folder("outbox", "batch")
    assert sorted(p.name for p in batch.iterdir()) == [uid]
    suffixes = sorted(p.name.split(".", 3)[-1] for p in (batch / uid).iterdir())
    assert suffixes == ["batch.json", "errors.jsonl", "output.jsonl"]
    index, npy = settings.folder("outbox", "index"), settings.folder("outbox", "npy")
    assert sorted(p.name for p in index.iterdir()) == [uid]
    assert sorted(p.name for p in (index / uid).iterdir()) == [
        "doc.txt.embedding.json",
        "docs.jsonl.embeddings.jsonl",
    ]
    assert sorted(p.name for p in npy.iterdir()) == [uid]
    assert sorted(p.name for p in (npy / uid).iterdir()) == [
        "rows.jsonl.embeddings.ids.jsonl",
        "rows.jsonl.embeddings.npy",
    ]
