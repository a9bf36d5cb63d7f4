"""Continuous batching on llama.cpp's low-level API.

Many callers (one per runner slot) call `complete()` at once; one decode thread owns
the llama.cpp context and advances the active sequences with each `llama_decode` (at
most `n_batch` tokens): the running sequences' next tokens, and new sequences' prompt
chunks, in the same call or, in batch-invariant mode, in alternate calls. A finished
sequence frees its slot at once, and the next waiting request takes it without waiting
for the others.

Batch invariance (`BatchOptions.batch_invariant`, off by default): a job's tokens do not
depend on what else is in the batch. llama.cpp's CPU backend computes a row with other
kernels when a matrix product has more columns (8 or more for its tiled K-quant
matmul, 4 or more for repacked weights), and attention over a stream with other kernels
when the stream holds a prompt chunk beside a running token; either flips near-ties in
greedy decoding. So in this mode those two kernel families are turned off for the
process, and a decode call holds either every running sequence's next token or one
sequence's prompt chunk, never both.

Shared-prefix reuse: a request may name the part of its prompt that many requests
share (a pipeline's instructions). That prefix is evaluated once into a cache
sequence and copied into each new sequence with `llama_memory_seq_cp`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from worker.errors import GenerationInterrupted, InputError, ModelError
from worker.liveness import LIVENESS, beat
from worker.llm.engine import Completion, EngineOptions, context_error
from worker.llm.generation import Generation
from worker.llm.grammar import compile_grammar
from worker.llm.llama_logs import route_llama_logs
from worker.llm.model_files import ModelFile, verify_model
from worker.llm.native import free_native, join_decoder
from worker.llm.sampling import GrammarStats, SamplerChain
from worker.llm.speculation import NgramLookup
from worker.llm.ubatches import common_draft_length, weight_passes

log = logging.getLogger(__name__)

# A cached prefix shorter than this is not worth a cache sequence.
MIN_PREFIX_TOKENS = 16
PREFIX_CACHE_SLOTS = 2
DEFAULT_SPECULATE = 4
# Lay out decode calls by sequence id and hand out the lowest free id (worker.llm.ubatches).
SEQ_ORDER = True
# How long close() waits for the decode thread (it ends within one decode call).
CLOSE_JOIN_SECONDS = 30.0


@dataclass(frozen=True)
class BatchOptions:
    """How many sequences run at once and how big each decode call may be."""

    parallel: int = 8
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads_batch: int | None = None
    prefix_cache: bool = True
    batch_invariant: bool = False
    # llama.cpp's extra weight buffers (repacked layouts, AMX tiles). Off here by default:
    # some virtual machines report AMX and then fault on it (SIGILL); the daemon decides
    # with a probe at start-up (worker.llm.repack_probe).
    repack_weights: bool = False
    # Prompt-lookup speculation: at most this many draft tokens per greedy sequence and
    # decode call, copied from where the sequence's last tokens occurred before (0: off).
    # Greedy output is the same token for token; fewer decode calls (docs/performance.md).
    # None: DEFAULT_SPECULATE, or 0 with batch_invariant (drafts add rows to a decode call,
    # and near-ties then flip as they do with other neighbours: 27/32 for 29/32).
    speculate: int | None = None
    # One KV buffer for all sequences (llama-server's default with automatic slots): every
    # call is one weight pass, but every token attends over every sequence's cells.
    kv_unified: bool = False

    @property
    def draft_tokens(self) -> int:
        """The speculation in effect: at most this many draft tokens a call (0: none)."""
        if self.speculate is not None:
            return self.speculate
        return 0 if self.batch_invariant else DEFAULT_SPECULATE


@dataclass
class EngineStats:
    """Counters since start, exported as metrics (edge_worker_engine_*) and read by the bench."""

    decode_calls: int = 0
    prompt_tokens_evaluated: int = 0
    prompt_tokens_reused: int = 0
    generated_tokens: int = 0
    # The profile's counts (docs/performance.md): decode calls by what they carried, the
    # seconds inside llama_decode, and greedy grammar sampling's paths.
    calls_running_only: int = 0
    calls_mixed: int = 0
    calls_prompt_only: int = 0
    running_tokens: int = 0  # tokens decoded for their logits (next tokens, drafts)
    weight_passes: int = 0  # llama.cpp's micro-batches (worker.llm.ubatches)
    draft_tokens: int = 0
    draft_tokens_accepted: int = 0
    decode_seconds: float = 0.0
    sample_seconds: float = 0.0  # the decode thread's CPU time in sampling and stop checks
    grammar: GrammarStats = field(default_factory=GrammarStats)


@dataclass
class _Request:
    tokens: list[int]
    generation: Generation
    should_stop: Callable[[], bool]
    prefix_tokens: list[int] | None
    grammar: str | None = None  # compiled by the caller, off the decode thread
    done: threading.Event = field(default_factory=threading.Event)
    result: Completion | None = None
    error: BaseException | None = None


@dataclass
class _Sequence:
    request: _Request
    seq_id: int
    sampler: SamplerChain
    n_past: int = 0  # prompt tokens already in the KV cache
    pending: int | None = None  # last sampled token, fed in the next decode
    generated: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    logits_index: int = -1
    drafts: list[int] = field(default_factory=list)  # fed after `pending` in this call
    draft_limit: int = 0  # the next draft's length: shrinks after a miss, grows back
    lookup: NgramLookup | None = None  # prompt-lookup drafts (greedy sequences only)

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.request.tokens)


class BatchedEngine:
    """One resident model serving `parallel` sequences with continuous batching."""

    def __init__(
        self,
        model: ModelFile,
        options: EngineOptions,
        batch: BatchOptions = BatchOptions(),
        verify: bool = True,
    ) -> None:
        if verify:
            verify_model(model)
        import llama_cpp

        route_llama_logs()
        self._ll: Any = llama_cpp
        self.model = model
        self.options = options
        self.batch_options = batch
        self.n_ctx = options.n_ctx  # per sequence, as the settings mean it
        self.parallel = batch.parallel
        self.stats = EngineStats()
        started = time.monotonic()
        if batch.batch_invariant:
            # ggml reads this once per process, at its first matrix product, so the
            # choice holds for the whole process (and its children, which inherit it):
            # one process should not mix engines of both modes.
            os.environ["GGML_CPU_TILED_MM"] = "0"
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = options.n_gpu_layers
        # Repacked weights use a gemm kernel for 4+ rows and a gemv for fewer, so batch
        # invariance needs them off.
        mparams.use_extra_bufts = batch.repack_weights and not batch.batch_invariant
        self._model = llama_cpp.llama_model_load_from_file(str(model.path).encode(), mparams)
        if not self._model:
            raise ModelError(f"cannot load model {model.path}: llama.cpp could not read it")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        cache_slots = PREFIX_CACHE_SLOTS if batch.prefix_cache else 0
        self._n_seq = batch.parallel + cache_slots
        cparams = llama_cpp.llama_context_default_params()
        # One KV stream per sequence, each the size of one context window.
        cparams.n_ctx = options.n_ctx * self._n_seq
        cparams.n_seq_max = self._n_seq
        cparams.n_batch = batch.n_batch
        cparams.n_ubatch = min(batch.n_ubatch, batch.n_batch)
        threads = options.n_threads or os.cpu_count() or 1
        cparams.n_threads = threads
        cparams.n_threads_batch = batch.n_threads_batch or threads
        cparams.swa_full = True  # prefix copies need the full cache of sliding-window layers
        cparams.no_perf = True
        # One KV stream per sequence: in a unified buffer every token attends over all
        # sequences' cells (masked), measured 3% slower here (docs/performance.md).
        cparams.kv_unified = batch.kv_unified
        if batch.batch_invariant:
            # The attention kernels of llama-cpp-python's Llama (flash attention off): a
            # row's arithmetic is the same as a lone sequence's.
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        else:
            cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise ModelError(f"cannot create a llama.cpp context for {model.path}")
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(batch.n_batch, 0, 1)
        self.load_seconds = time.monotonic() - started

        self._free_slots = list(range(batch.parallel))
        self._cache_seqs = list(range(batch.parallel, self._n_seq))
        self._prefixes: OrderedDict[tuple[int, ...], int] = OrderedDict()
        self._active: list[_Sequence] = []
        self._incoming: queue.Queue[_Request] = queue.Queue()
        self._waiting: list[_Request] = []
        self._prompt_turn = True  # batch-invariant mode alternates prompt and token calls
        self._closed = threading.Event()
        self._freed = False
        # Busy while a step runs: a llama_decode call that never returns stops the pings.
        self._heartbeat = LIVENESS.register("decode", options.decode_stall_seconds)
        self._thread = threading.Thread(target=self._loop, name="decode", daemon=True)
        self._thread.start()

    # Public --------------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, str]:
        """GGUF metadata (architecture, trained context length, ...)."""
        ll = self._ll
        found: dict[str, str] = {}
        buf = ctypes.create_string_buffer(4096)
        for i in range(ll.llama_model_meta_count(self._model)):
            ll.llama_model_meta_key_by_index(self._model, i, buf, len(buf))
            key = buf.value.decode("utf-8", errors="replace")
            ll.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf))
            found[key] = buf.value.decode("utf-8", errors="replace")
        return found

    def tokenize(self, text: str, special: bool = False, bos: bool = True) -> list[int]:
        """Tokens of a prompt, with BOS. `special` parses control-token text (`<start_of_turn>`):
        only for prompts whose untrusted parts went through `worker.chat.neutralize`."""
        if self._freed:  # the vocabulary is gone with the model
            raise GenerationInterrupted("engine closed")
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buf = (self._ll.llama_token * capacity)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, capacity, bos, special)
        if n < 0:  # pragma: no cover - capacity is always enough (a token is >= 1 byte)
            raise RuntimeError("tokenizer buffer too small")
        return list(buf[:n])

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` on its own (no BOS, control-token text not parsed)."""
        return len(self.tokenize(text, bos=False))

    @cached_property
    def control_tokens(self) -> frozenset[str]:
        """Texts that tokenize to a control token when special parsing is on (`<eos>`, ...)."""
        ll = self._ll
        wanted = ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_UNKNOWN
        found = set()
        for token in range(ll.llama_vocab_n_tokens(self._vocab)):
            if ll.llama_vocab_get_attr(self._vocab, token) & wanted:
                text = ll.llama_vocab_get_text(self._vocab, token)
                if text:
                    found.add(text.decode("utf-8", errors="replace"))
        return frozenset(found)

    def complete(
        self,
        prompt: str,
        generation: Generation,
        should_stop: Callable[[], bool],
        shared_prefix: str | None = None,
    ) -> Completion:
        """Generate a completion, batched with every other caller's."""
        if self._closed.is_set():
            raise GenerationInterrupted("engine closed")
        tokens = self.tokenize(prompt, special=generation.special)
        too_long = context_error(len(tokens), self.n_ctx, generation.max_tokens)
        if too_long is not None:
            raise too_long
        prefix = None
        if shared_prefix and self.batch_options.prefix_cache:
            prefix = self.tokenize(shared_prefix)
        grammar = None
        if generation.json_schema is not None:  # bounded, checked, cached: not on decode
            grammar = compile_grammar(generation.json_schema, generation.max_tokens)
        request = _Request(tokens, generation, should_stop, prefix, grammar)
        self._incoming.put(request)
        while not request.done.wait(0.5):
            beat()  # the caller's slot waits on the decode thread, which beats its own
            if self._closed.is_set():
                raise GenerationInterrupted("engine closed")
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def close(self, join_timeout: float = CLOSE_JOIN_SECONDS) -> None:
        """Stop the decode thread and free llama.cpp's memory (once).

        A decode thread still running after `join_timeout` (a llama_decode call that does
        not return) may still touch the context: then nothing is freed, the memory is
        left to the process's exit, and a later `close()` frees it if the thread ended.
        """
        self._closed.set()
        if not join_decoder(self._thread, self._heartbeat, join_timeout, "decode thread"):
            return
        if self._freed:
            return
        self._freed = True
        free_native(self._ll, self._batch, self._ctx, self._model)

    # Decode thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                self._admit()
                if not self._active:
                    with contextlib.suppress(queue.Empty):
                        self._waiting.append(self._incoming.get(timeout=0.1))
                    continue
                self._heartbeat.busy()
                try:
                    self._step()
                finally:
                    self._heartbeat.idle()
            except Exception as exc:  # fail what is in hand, keep serving
                log.exception("decode step failed")
                for seq in list(self._active):
                    self._finish(seq, error=RuntimeError(f"llama.cpp decode failed: {exc}"))

    def _admit(self) -> None:
        while True:
            try:
                self._waiting.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        while self._waiting and self._free_slots:
            request = self._waiting.pop(0)
            try:
                self._start(request)
            except Exception as exc:  # e.g. a grammar llama.cpp refuses: this request only
                if not isinstance(exc, InputError | GenerationInterrupted):
                    log.warning("a request failed to start: %s", exc)
                request.error = exc
                request.done.set()  # its caller returns at once

    def _start(self, request: _Request) -> None:
        """Give `request` a slot, a sampler and its cached prefix; on failure, give them back."""
        if request.should_stop():
            raise GenerationInterrupted("stopped before it started")
        # The lowest free id: running sequences' ids stay consecutive (one weight pass).
        seq_id = min(self._free_slots) if SEQ_ORDER else self._free_slots[0]
        self._free_slots.remove(seq_id)
        try:
            sampler = SamplerChain(
                self._ll, self._vocab, request.generation, self.options.seed, request.grammar
            )
        except BaseException:
            self._free_slots.append(seq_id)
            raise
        seq = _Sequence(request, seq_id, sampler)
        if self.batch_options.draft_tokens and request.generation.temperature <= 0:
            seq.lookup = NgramLookup(request.tokens)
            seq.draft_limit = self.batch_options.draft_tokens
        try:
            seq.n_past = self._reuse_prefix(seq)
        except BaseException:
            self._ll.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
            self._free_slots.append(seq_id)
            sampler.free()
            raise
        self._active.append(seq)

    def _reuse_prefix(self, seq: _Sequence) -> int:
        """Copy a cached prefix into the sequence; returns how many prompt tokens it covers."""
        prefix = seq.request.prefix_tokens
        tokens = seq.request.tokens
        if not prefix or (not self._cache_seqs and not self._prefixes):
            return 0
        # The prompt's tokens may differ from the prefix's at the seam: use the common part.
        common = 0
        for a, b in zip(prefix, tokens, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # the last prompt token must produce logits
        if common < MIN_PREFIX_TOKENS:
            return 0
        key = tuple(prefix[:common])
        cache_seq = self._prefixes.get(key)
        if cache_seq is None:
            cache_seq = self._evaluate_prefix(key)
        else:
            self._prefixes.move_to_end(key)
        ll = self._ll
        ll.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        ll.llama_memory_seq_cp(self._mem, cache_seq, seq.seq_id, -1, -1)
        self.stats.prompt_tokens_reused += common
        return common

    def _evaluate_prefix(self, key: tuple[int, ...]) -> int:
        """Evaluate `key` into a cache sequence (evicting the least recently used)."""
        if self._cache_seqs:
            cache_seq = self._cache_seqs.pop(0)
        else:
            _old, cache_seq = self._prefixes.popitem(last=False)
        ll = self._ll
        ll.llama_memory_seq_rm(self._mem, cache_seq, -1, -1)
        n_batch = self.batch_options.n_batch
        try:
            for start in range(0, len(key), n_batch):
                chunk = key[start : start + n_batch]
                self._batch.n_tokens = 0
                for offset, token in enumerate(chunk):
                    self._add(token, start + offset, cache_seq, logits=False)
                self._decode()
                self.stats.prompt_tokens_evaluated += len(chunk)
        except BaseException:
            # Half a prefix is no prefix: empty the sequence and keep it for the next one.
            self._batch.n_tokens = 0
            ll.llama_memory_seq_rm(self._mem, cache_seq, -1, -1)
            self._cache_seqs.append(cache_seq)
            raise
        self._prefixes[key] = cache_seq
        return cache_seq

    def _add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        b = self._batch
        i: int = b.n_tokens
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits
        b.n_tokens = i + 1
        return i

    def _decode(self) -> None:
        started = time.perf_counter()
        code = self._ll.llama_decode(self._ctx, self._batch)
        self.stats.decode_seconds += time.perf_counter() - started
        self.stats.decode_calls += 1
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def _step(self) -> None:
        """One decode call: running sequences' next tokens and/or prompt chunks."""
        self._batch.n_tokens = 0
        running = [s for s in self._active if not s.prefilling and s.pending is not None]
        prefilling = [s for s in self._active if s.prefilling]
        budget = self.batch_options.n_batch
        if SEQ_ORDER:  # see worker.llm.ubatches: one weight pass where it can be
            running.sort(key=lambda s: s.seq_id)
        if not self.batch_options.batch_invariant:
            self._plan_drafts(running, budget)
            budget -= sum(1 + len(seq.drafts) for seq in running)
            chunks: dict[int, int] = {}
            for seq in prefilling:  # the budget goes to the oldest prompts first
                if budget <= 0:
                    break
                chunks[seq.seq_id] = min(budget, len(seq.request.tokens) - seq.n_past)
                budget -= chunks[seq.seq_id]
            chunked = [seq for seq in prefilling if seq.seq_id in chunks]
            members = running + chunked
            if SEQ_ORDER:
                members.sort(key=lambda s: s.seq_id)
            for seq in members:
                if seq.prefilling:
                    self._add_prompt_chunk(seq, chunks[seq.seq_id])
                else:
                    self._add_next_tokens([seq])
        elif prefilling and (self._prompt_turn or not running):
            # One sequence's chunk alone: the same ubatch shape as a sequence on its own.
            self._add_prompt_chunk(prefilling[0], budget)
            self._prompt_turn = False
        else:
            self._plan_drafts(running, budget)
            self._add_next_tokens(running)
            self._prompt_turn = True
        n_tokens = self._batch.n_tokens
        if n_tokens == 0:
            return
        self._count_call(n_tokens, sum(1 + len(s.drafts) for s in running if s.logits_index >= 0))
        n_ubatch = self.batch_options.n_ubatch
        if self.batch_options.kv_unified:  # llama.cpp's simple split: n_ubatch at a time
            self.stats.weight_passes += -(-n_tokens // n_ubatch)
        else:
            seq_ids = [self._batch.seq_id[i][0] for i in range(n_tokens)]
            self.stats.weight_passes += weight_passes(seq_ids, n_ubatch)
        self._decode()
        for seq in list(self._active):
            if seq.request.should_stop():
                self._finish(seq, error=GenerationInterrupted("stopped by request"))
            elif seq.logits_index >= 0:
                self._sample(seq)
                seq.logits_index = -1
                seq.drafts = []

    def _count_call(self, n_tokens: int, running_tokens: int) -> None:
        stats = self.stats
        stats.running_tokens += running_tokens
        if running_tokens == n_tokens:
            stats.calls_running_only += 1
        elif running_tokens == 0:
            stats.calls_prompt_only += 1
        else:
            stats.calls_mixed += 1

    def _plan_drafts(self, running: list[_Sequence], budget: int) -> None:
        """Each running sequence's draft tokens for this call (speculation): what its
        lookup found, cut or padded to one common length, so that the call stays one
        weight pass (worker.llm.ubatches)."""
        found: list[list[int]] = []
        for seq in running:
            seq.drafts = []
            if seq.lookup is None:
                continue
            # No draft past max_tokens: the last one generated needs no check.
            left = seq.request.generation.max_tokens - len(seq.generated) - 1
            limit = min(seq.draft_limit, left)
            found.append(seq.lookup.draft(limit) if limit > 0 else [])
        if not found:
            return
        # The median of what was found (drafts must not crowd out the next tokens).
        length = min(common_draft_length([len(f) for f in found]), (budget // len(running)) - 1)
        if length <= 0:
            return
        drafting = [seq for seq in running if seq.lookup is not None]
        for seq, draft in zip(drafting, found, strict=True):
            left = seq.request.generation.max_tokens - len(seq.generated) - 1
            want = min(length, max(left, 0))
            # A short draft is padded with its last token (or the pending one): a guess that
            # costs its row either way, and keeps every sequence's share of the call equal.
            filler = draft[-1] if draft else seq.pending
            assert filler is not None
            seq.drafts = (draft + [filler] * want)[:want]

    def _add_next_tokens(self, running: list[_Sequence]) -> int:
        """Each running sequence's last sampled token, to get its next logits, and its
        planned draft tokens after it, each with logits to check it by."""
        added = 0
        for seq in running:
            assert seq.pending is not None
            pos = len(seq.request.tokens) + len(seq.generated) - 1
            seq.logits_index = self._add(seq.pending, pos, seq.seq_id, logits=True)
            for k, token in enumerate(seq.drafts):
                self._add(token, pos + 1 + k, seq.seq_id, logits=True)
            added += 1 + len(seq.drafts)
        return added

    def _add_prompt_chunk(self, seq: _Sequence, budget: int) -> int:
        """Up to `budget` more prompt tokens of `seq`; logits for its last one."""
        tokens = seq.request.tokens
        take = min(budget, len(tokens) - seq.n_past)
        for pos in range(seq.n_past, seq.n_past + take):
            last = pos == len(tokens) - 1
            index = self._add(tokens[pos], pos, seq.seq_id, logits=last)
            if last:
                seq.logits_index = index
        seq.n_past += take
        self.stats.prompt_tokens_evaluated += take
        return take

    def _sample(self, seq: _Sequence) -> None:
        """Sample the next token; with drafts, go on while each sampled token is the
        draft whose logits come next (so every token is the one sampling one at a time
        would give), then drop the refused drafts from the cache."""
        started = time.thread_time()
        try:
            self._sample_and_check(seq)
        finally:
            self.stats.sample_seconds += time.thread_time() - started

    def _sample_and_check(self, seq: _Sequence) -> None:
        index = seq.logits_index
        pos = len(seq.request.tokens) + len(seq.generated) - 1  # the pending token's
        drafts = seq.drafts
        accepted = 0
        while True:
            token = seq.sampler.sample(self._ctx, index)
            if not self._take(seq, token):
                return  # finished: its cache is gone with it
            if accepted < len(drafts) and token == drafts[accepted]:
                accepted += 1
                index += 1  # the draft's own row: the logits after it
                continue
            break
        if drafts:
            self.stats.draft_tokens += len(drafts)
            self.stats.draft_tokens_accepted += accepted
            # A draft token costs a row of the output layer whether it is kept or not:
            # after a miss, draft no further than this one held; a full hit grows it back.
            most = self.batch_options.draft_tokens
            seq.draft_limit = min(
                most, seq.draft_limit * 2 if accepted == len(drafts) else accepted + 1
            )
            if accepted < len(drafts):
                self._ll.llama_memory_seq_rm(self._mem, seq.seq_id, pos + 1 + accepted, -1)

    def _take(self, seq: _Sequence, token: int) -> bool:
        """Append a sampled token; False when it finished the sequence."""
        ll = self._ll
        self.stats.generated_tokens += 1
        generation = seq.request.generation
        if ll.llama_vocab_is_eog(self._vocab, token):
            self._finish(seq, reason="stop")
            return False
        seq.generated.append(token)
        if seq.lookup is not None:
            seq.lookup.append(token)
        seq.text += self._piece(token)
        if generation.stop:  # decoding the whole text each token only pays off for stops
            text = seq.text.decode("utf-8", errors="ignore")
            for stop in generation.stop:
                at = text.find(stop)
                if at >= 0:
                    self._finish(seq, reason="stop", text=text[:at])
                    return False
        if len(seq.generated) >= generation.max_tokens:
            self._finish(seq, reason="length")
            return False
        seq.pending = token
        return True

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _finish(
        self,
        seq: _Sequence,
        reason: str = "stop",
        text: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        self._active.remove(seq)
        self._ll.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        self._free_slots.append(seq.seq_id)
        self.stats.grammar.add(seq.sampler.grammar_stats)
        seq.sampler.free()
        request = seq.request
        if error is not None:
            request.error = error
        else:
            final = text if text is not None else seq.text.decode("utf-8", errors="replace")
            request.result = Completion(
                text=final,
                prompt_tokens=len(request.tokens),
                completion_tokens=len(seq.generated),
                finish_reason=reason,
            )
        request.done.set()
