"""Pooled embeddings on llama.cpp's low-level API, batched across callers.

Many callers (one per runner slot) call `embed(texts)` at once; one decode thread owns
the llama.cpp context and packs whole sequences, first come first served, into each
`llama_decode` call (at most `n_batch` tokens and `max_sequences` sequences).

The context runs with embeddings on and llama.cpp's pooling off: it hands back every
token's vector, and `pooling.pool` makes one vector per sequence (mean, first token or
last token). That is the same arithmetic llama.cpp's pooled modes do (dense output
layers are linear, so they commute with it), and it lets a pipeline pick its pooling
without a context per pooling type. A sequence is always decoded whole in one call, in
one micro-batch (`n_ubatch = n_batch`, one unified KV buffer so llama.cpp never splits
a batch by sequence), and the KV cells are cleared after every call: no sequence
outlives its call, so nothing is cached between inputs.

An input longer than `n_ctx` tokens is a `PromptTooLong` for that input only, or, when
the caller asks, is split into even token windows whose pooled vectors are averaged,
weighted by tokens (`pooling.combine_chunks`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from worker.errors import GenerationInterrupted, InputError, ModelError, PromptTooLong
from worker.liveness import LIVENESS, beat
from worker.llm.engine import EngineOptions
from worker.llm.graph_cut import GraphCut, vectors_agree
from worker.llm.llama_logs import route_llama_logs
from worker.llm.model_files import ModelFile, verify_model
from worker.llm.native import free_native, join_decoder
from worker.llm.pooling import (
    Pooling,
    Vector,
    chunk_spans,
    combine_chunks,
    gguf_pooling,
    l2_normalize,
    pool,
)

log = logging.getLogger(__name__)

CLOSE_JOIN_SECONDS = 30.0
# How often a waiting caller looks at its stop flag and at the engine's state.
WAIT_STEP_SECONDS = 0.25
LongInput = Literal["fail", "chunk"]


@dataclass(frozen=True)
class EmbeddingOptions:
    """The embedding context: the longest input, the decode call size, the pooling."""

    n_ctx: int = 512  # tokens of the longest input, specials included
    n_batch: int = 512  # tokens per llama_decode call (raised to n_ctx if smaller)
    max_sequences: int = 64  # sequences per llama_decode call
    pooling: Pooling | None = None  # None: what the GGUF declares, else mean
    normalize: bool = True
    # Stop llama.cpp's graph at the token vectors (skips the unread logits); kept only
    # if a probe at load gives the same vectors (worker/llm/graph_cut.py).
    graph_cut: bool = True


@dataclass(frozen=True)
class Embeddings:
    """One vector per input text, in order, and the tokens each one took (chunks summed)."""

    vectors: list[Vector]
    tokens: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)


@dataclass
class EmbeddingStats:
    """Counters since start (read by the bench and metrics)."""

    decode_calls: int = 0
    sequences: int = 0
    tokens: int = 0


class Embedder(Protocol):
    """What job handlers need from an embedding engine."""

    n_ctx: int
    dimensions: int
    pooling: Pooling
    normalize: bool
    load_seconds: float

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as an input, specials included."""
        ...

    def embed(
        self,
        texts: Sequence[str],
        should_stop: Callable[[], bool],
        *,
        normalize: bool | None = None,
        pooling: Pooling | None = None,
        long_input: LongInput = "fail",
    ) -> Embeddings:
        """One vector per text; PromptTooLong for a text over n_ctx unless chunked."""
        ...

    def close(self) -> None:
        """Free the model (once no call runs)."""
        ...


@dataclass
class _Sequence:
    tokens: list[int]
    done: threading.Event = field(default_factory=threading.Event)
    rows: np.ndarray[Any, np.dtype[np.float32]] | None = None
    error: BaseException | None = None
    abandoned: bool = False  # its caller stopped waiting: skip it


class EmbeddingEngine:
    """One resident model in embeddings mode, serving every caller through one thread."""

    def __init__(
        self,
        model: ModelFile,
        options: EngineOptions,
        embedding: EmbeddingOptions = EmbeddingOptions(),
        verify: bool = True,
    ) -> None:
        if verify:
            verify_model(model)
        import llama_cpp

        route_llama_logs()
        self._ll: Any = llama_cpp
        self.model = model
        self.stats = EmbeddingStats()
        self._freed = False
        started = time.monotonic()
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = options.n_gpu_layers
        mparams.use_extra_bufts = False  # as BatchedEngine: AMX faults on some VMs
        self._model = llama_cpp.llama_model_load_from_file(str(model.path).encode(), mparams)
        if not self._model:
            raise ModelError(f"cannot load model {model.path}: llama.cpp could not read it")
        self._ctx: Any = None
        self._batch: Any = None
        try:
            self._setup(options, embedding)
        except BaseException:
            if self._batch is not None:
                llama_cpp.llama_batch_free(self._batch)
            if self._ctx:
                llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)
            raise
        self.load_seconds = time.monotonic() - started
        self._incoming: queue.Queue[list[_Sequence]] = queue.Queue()
        self._waiting: deque[_Sequence] = deque()
        self._closed = threading.Event()
        # Busy while a call decodes: a llama_decode call that never returns stops the pings.
        self._heartbeat = LIVENESS.register("embed-decode", options.decode_stall_seconds)
        self._thread = threading.Thread(target=self._loop, name="embed-decode", daemon=True)
        self._thread.start()

    def _setup(self, options: EngineOptions, embedding: EmbeddingOptions) -> None:
        ll = self._ll
        if ll.llama_model_has_encoder(self._model) and ll.llama_model_has_decoder(self._model):
            raise ModelError(f"{self.model.path}: encoder-decoder models cannot embed here")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.dimensions = int(ll.llama_model_n_embd_out(self._model))
        # A GGUF made for embeddings declares its pooling; a text-generation model used
        # as one (the default Gemma) declares none, and mean pooling is the usual choice.
        self.pooling: Pooling = embedding.pooling or gguf_pooling(self.metadata) or "mean"
        self.normalize = embedding.normalize
        trained = int(ll.llama_model_n_ctx_train(self._model))
        self.n_ctx = min(embedding.n_ctx, trained) if trained > 0 else embedding.n_ctx
        self.n_batch = max(embedding.n_batch, self.n_ctx)
        self.max_sequences = max(1, min(embedding.max_sequences, self.n_batch, 256))
        cparams = ll.llama_context_default_params()
        # Every sequence in a call is decoded whole and cleared after it: the KV cells
        # only ever hold one call's tokens.
        cparams.n_ctx = self.n_batch
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch  # one micro-batch: a sequence is never split
        cparams.n_seq_max = self.max_sequences
        cparams.kv_unified = True  # else llama.cpp splits by sequence into several ubatches
        cparams.embeddings = True
        cparams.pooling_type = ll.LLAMA_POOLING_TYPE_NONE  # token rows; pooled in numpy
        threads = options.n_threads or os.cpu_count() or 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self._prefix, self._suffix = self._special_wrap()
        # The logits of an embeddings context are never read: stop its graph before them,
        # if a probe says that changes nothing; else a context without the callback.
        cut = GraphCut(ll)
        self.graph_cut = False
        if embedding.graph_cut and cut.available:
            cut.install(cparams)
            self._new_context(cparams)
            self.graph_cut = self._verify_cut(cut)
            if self.graph_cut:
                self._cut = cut  # the callback lives as long as the context
                return
            ll.llama_free(self._ctx)
            self._ctx = None
            cparams.cb_eval = ll.ggml_backend_sched_eval_callback()  # NULL: none
        self._new_context(cparams)

    def _new_context(self, cparams: Any) -> None:
        self._ctx = self._ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelError(f"cannot create a llama.cpp embeddings context for {self.model.path}")
        self._mem = self._ll.llama_get_memory(self._ctx)  # NULL for encoder-only models (BERT)

    def _verify_cut(self, cut: GraphCut) -> bool:
        """Whether the cut stops the graph and leaves a probe's token vectors as they are.

        The probe is decoded whole, then another text whole, then the probe cut: a cut
        that skipped the node writing the vectors would hand back the other text's.
        """
        probe = "Edge worker checks that a shorter graph gives the same vectors. " * 3
        content = self._tokenize(probe, special=False)
        tokens = (self._prefix + content + self._suffix)[: self.n_batch]
        other = (self._prefix + content[::-1] + self._suffix)[: self.n_batch]
        name = self.model.path.name
        try:
            whole = self._decode_alone(tokens)
            self._decode_alone(other)
            cut.enabled = True
            cut.stopped = False
            trimmed = self._decode_alone(tokens)
        except Exception as exc:  # the jobs will say what is wrong with the model
            log.warning("%s: the graph-cut probe failed (%s); the whole graph runs", name, exc)
            return False
        finally:
            cut.enabled = False
        if not cut.stopped:
            log.info("%s: no token-vector node to stop at; the whole graph runs", name)
            return False
        if not vectors_agree(whole, trimmed):
            log.warning(
                "%s: its graph changes the vectors after the token-vector node; "
                "embeddings compute the whole graph (logits included)",
                name,
            )
            return False
        cut.enabled = True
        log.info("%s: embeddings stop llama.cpp's graph at the token vectors", name)
        return True

    def _decode_alone(self, tokens: list[int]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The token vectors of one sequence, decoded by itself (at load, before the
        decode thread starts)."""
        self._fill([tokens])
        try:
            if self._ll.llama_decode(self._ctx, self._batch) != 0:
                raise ModelError(f"{self.model.path}: llama.cpp could not decode a probe")
            return self._rows(0, len(tokens))
        finally:
            if self._mem:
                self._ll.llama_memory_clear(self._mem, True)

    # Public --------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, str]:
        """GGUF metadata (architecture, pooling type, ...)."""
        ll = self._ll
        found: dict[str, str] = {}
        buf = ctypes.create_string_buffer(4096)
        for i in range(ll.llama_model_meta_count(self._model)):
            ll.llama_model_meta_key_by_index(self._model, i, buf, len(buf))
            key = buf.value.decode("utf-8", errors="replace")
            ll.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf))
            found[key] = buf.value.decode("utf-8", errors="replace")
        return found

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as one input, specials (BOS, SEP...) included."""
        return len(self._prefix) + len(self._tokenize(text, special=False)) + len(self._suffix)

    def embed(
        self,
        texts: Sequence[str],
        should_stop: Callable[[], bool],
        *,
        normalize: bool | None = None,
        pooling: Pooling | None = None,
        long_input: LongInput = "fail",
    ) -> Embeddings:
        """One vector per text, batched with every other caller's inputs.

        PromptTooLong if a text is over n_ctx tokens and `long_input` is "fail";
        InputError for an empty text; GenerationInterrupted when `should_stop` turns
        true or the engine closes while waiting.
        """
        if self._closed.is_set():
            raise GenerationInterrupted("engine closed")
        if should_stop():  # a stopped slot queues nothing: decoding is all this costs
            raise GenerationInterrupted("stopped by request")
        normalize = self.normalize if normalize is None else normalize
        pooling = pooling or self.pooling
        plans = [self._plan(i, text, len(texts), long_input) for i, text in enumerate(texts)]
        sequences = [seq for plan in plans for seq in plan]
        if sequences:
            self._incoming.put(sequences)
            self._wait(sequences, should_stop)
        vectors: list[Vector] = []
        tokens: list[int] = []
        for plan in plans:
            pooled = []
            for seq in plan:
                assert seq.rows is not None
                pooled.append(pool(seq.rows, pooling))
            weights = [len(seq.tokens) for seq in plan]
            if len(pooled) == 1:
                vectors.append(l2_normalize(pooled[0]) if normalize else pooled[0])
            else:
                vectors.append(combine_chunks(pooled, weights, normalize))
            tokens.append(sum(weights))
        return Embeddings(vectors, tokens)

    def close(self, join_timeout: float = CLOSE_JOIN_SECONDS) -> None:
        """Stop the decode thread and free llama.cpp's memory (once; never while a
        decode call may still be running)."""
        self._closed.set()
        if not join_decoder(self._thread, self._heartbeat, join_timeout, "embedding decode thread"):
            return
        if self._freed:
            return
        self._freed = True
        free_native(self._ll, self._batch, self._ctx, self._model)

    # Callers' side ---------------------------------------------------------------
    def _tokenize(self, text: str, special: bool) -> list[int]:
        if self._freed:  # the vocabulary is gone with the model
            raise GenerationInterrupted("engine closed")
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buf = (self._ll.llama_token * capacity)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, capacity, special, False)
        if n < 0:  # pragma: no cover - capacity is always enough (a token is >= 1 byte)
            raise RuntimeError("tokenizer buffer too small")
        return list(buf[:n])

    def _special_wrap(self) -> tuple[list[int], list[int]]:
        """The tokens the vocabulary puts before and after an input (BOS; CLS and SEP)."""
        probe = "edge worker probe"
        bare = self._tokenize(probe, special=False)
        full = self._tokenize(probe, special=True)
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []  # pragma: no cover - no known vocabulary changes the text itself

    def _plan(self, index: int, text: str, count: int, long_input: LongInput) -> list[_Sequence]:
        """The sequences that embed `text`: one, or its chunks."""
        where = f"input {index}: " if count > 1 else ""
        if not text.strip():
            raise InputError(f"{where}empty input: nothing to embed")
        content = self._tokenize(text, special=False)
        extra = len(self._prefix) + len(self._suffix)
        total = len(content) + extra
        if total <= self.n_ctx:
            return [_Sequence(self._prefix + content + self._suffix)]
        if long_input == "fail":
            raise PromptTooLong(
                f"{where}input is {total} tokens; the embedding model's context allows "
                f'{self.n_ctx} (n_ctx): raise n_ctx or set long_input = "chunk"'
            )
        return [
            _Sequence(self._prefix + content[start:end] + self._suffix)
            for start, end in chunk_spans(len(content), self.n_ctx - extra)
        ]

    def _wait(self, sequences: list[_Sequence], should_stop: Callable[[], bool]) -> None:
        try:
            for seq in sequences:
                while not seq.done.wait(WAIT_STEP_SECONDS):
                    beat()  # the caller's slot waits on the decode thread, which beats its own
                    if self._closed.is_set():
                        raise GenerationInterrupted("engine closed")
                    if should_stop():
                        raise GenerationInterrupted("stopped by request")
                if seq.error is not None:
                    raise seq.error
        except BaseException:
            for seq in sequences:
                seq.abandoned = True
            raise

    # Decode thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._take_incoming()
                if not self._waiting:
                    with contextlib.suppress(queue.Empty):
                        self._waiting.extend(self._incoming.get(timeout=0.1))
                    continue
                self._heartbeat.busy()
                try:
                    self._step()
                finally:
                    self._heartbeat.idle()
            except Exception:  # pragma: no cover - _step fails its own sequences
                log.exception("embedding decode loop failed")
        for seq in self._waiting:  # callers see the closed flag within a wait step
            seq.error = GenerationInterrupted("engine closed")
            seq.done.set()

    def _take_incoming(self) -> None:
        while True:
            try:
                self._waiting.extend(self._incoming.get_nowait())
            except queue.Empty:
                return

    def _pack(self) -> list[_Sequence]:
        """The waiting sequences that go into the next call, in arrival order."""
        packed: list[_Sequence] = []
        used = 0
        while self._waiting and len(packed) < self.max_sequences:
            seq = self._waiting[0]
            if seq.abandoned:
                self._waiting.popleft()
                continue
            if used + len(seq.tokens) > self.n_batch:
                break
            self._waiting.popleft()
            packed.append(seq)
            used += len(seq.tokens)
        return packed

    def _step(self) -> None:
        packed = self._pack()
        if not packed:
            return
        ll = self._ll
        batch = self._batch
        spans = self._fill([seq.tokens for seq in packed])
        try:
            code = ll.llama_decode(self._ctx, batch)
            self.stats.decode_calls += 1
            if code != 0:
                raise RuntimeError(f"llama_decode returned {code}")
            for seq, (start, end) in zip(packed, spans, strict=True):
                seq.rows = self._rows(start, end)
        except Exception as exc:
            log.warning("an embedding decode call failed: %s", exc)
            for seq in packed:
                seq.error = RuntimeError(f"llama.cpp embedding decode failed: {exc}")
        finally:
            if self._mem:
                ll.llama_memory_clear(self._mem, True)
        self.stats.sequences += len(packed)
        self.stats.tokens += batch.n_tokens
        for seq in packed:
            seq.done.set()

    def _fill(self, sequences: list[list[int]]) -> list[tuple[int, int]]:
        """Put `sequences` into the batch, sequence i as seq_id i; their [start, end)."""
        batch = self._batch
        batch.n_tokens = 0
        spans = []
        for seq_id, tokens in enumerate(sequences):
            start = batch.n_tokens
            for pos, token in enumerate(tokens):
                i = batch.n_tokens
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq_id
                batch.logits[i] = True  # embeddings mode outputs every token anyway
                batch.n_tokens = i + 1
            spans.append((start, batch.n_tokens))
        return spans

    def _rows(self, start: int, end: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The token vectors of batch positions [start, end)."""
        ll = self._ll
        rows = np.empty((end - start, self.dimensions), dtype=np.float32)
        size = self.dimensions * ctypes.sizeof(ctypes.c_float)
        for row, i in enumerate(range(start, end)):
            pointer = ll.llama_get_embeddings_ith(self._ctx, i)
            if not pointer:
                raise RuntimeError(f"llama.cpp returned no embedding for batch position {i}")
            ctypes.memmove(rows[row].ctypes.data, pointer, size)
        return rows
