"""Per-sequence llama.cpp sampler chains built from a pipeline's generation parameters.

JSON output is sampled lazily under its grammar, as llama.cpp's own sampler does:
applying a grammar to the whole vocabulary (262,144 tokens for Gemma) before every
sample is most of the cost of a JSON token. For greedy sampling without penalties
(what JSON pipelines use) the chain picks the best token first and asks the grammar
about that one token only; only when the grammar rejects it is the grammar applied to
the whole vocabulary and the token picked again. The result is the same token: the
best token the grammar allows.

A refusal first asks the grammar about the best CANDIDATES tokens only (a few hundred
microseconds against tens of milliseconds for 262,144): if one of them is allowed, the
best allowed among them is the best allowed overall, since every other token scores at
most the lowest candidate. Ties are broken as llama.cpp's greedy sampler does (the lowest
token id), and a best allowed candidate that ties with the lowest candidate goes to the
whole vocabulary, where a token outside the candidates could share its score.
"""

from __future__ import annotations

import ctypes
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.llm.generation import Generation
from worker.llm.grammar import UnsupportedSchema, compile_grammar

# Tokens of history the repetition penalty looks at.
PENALTY_LAST_N = 64
# Greedy JSON output picks first and asks the grammar after (see above).
LAZY_GRAMMAR = True
# How many of the best tokens a refusal asks the grammar about before the whole
# vocabulary (0: straight to the whole vocabulary, as before).
CANDIDATES = 256
# numpy's view of llama_token_data (id, logit, p): candidates are written into it.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@dataclass
class GrammarStats:
    """How greedy grammar sampling went: each sample ends in one of the three paths."""

    samples: int = 0
    first_pick: int = 0  # the best token was allowed
    candidates: int = 0  # refused; the best allowed was among the best CANDIDATES
    whole_vocabulary: int = 0  # refused; the grammar judged all 262,144 tokens
    seconds: float = 0.0  # CPU time in sample(), logits to accepted token
    whole_vocabulary_seconds: float = 0.0

    def add(self, other: GrammarStats) -> None:
        """Add `other`'s counts to these."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class SamplerChain:
    """A llama.cpp sampler chain: penalties, then greedy or top-k/top-p/min-p/temperature.

    llama.cpp answers a sampler it cannot build with NULL, and a NULL sampler in a chain
    crashes the process at the first token: every sampler is checked before it is added,
    and a grammar llama.cpp refuses is an UnsupportedSchema for this request alone.
    """

    def __init__(
        self,
        ll: Any,
        vocab: Any,
        generation: Generation,
        default_seed: int,
        grammar: str | None = None,
    ) -> None:
        """`grammar`: the GBNF of `generation.json_schema` when the caller compiled it
        already (off the decode thread); compiled here otherwise."""
        self._ll = ll
        self._fast: Any = None  # greedy alone: the first pick of the lazy grammar path
        self._grammar: Any = None  # the chain's own grammar sampler (owned by the chain)
        self.grammar_stats = GrammarStats()
        params = ll.llama_sampler_chain_default_params()
        params.no_perf = True
        self._chain = ll.llama_sampler_chain_init(params)
        if not self._chain:
            raise RuntimeError("llama.cpp could not create a sampler chain")
        try:
            self._build(vocab, generation, default_seed, grammar)
        except BaseException:
            self.free()  # the samplers added so far belong to the chain
            raise

    def _build(
        self, vocab: Any, generation: Generation, default_seed: int, grammar: str | None
    ) -> None:
        ll = self._ll
        if generation.json_schema is not None:
            # The grammar first: every later step only sees tokens the schema allows.
            if grammar is None:
                grammar = compile_grammar(generation.json_schema, generation.max_tokens)
            sampler = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not sampler:
                raise UnsupportedSchema(
                    "llama.cpp refused the grammar of this JSON Schema with the model's "
                    "vocabulary: simplify the schema"
                )
            self._add(sampler, "grammar")
            stateless = generation.temperature <= 0 and generation.repeat_penalty == 1.0
            if LAZY_GRAMMAR and stateless:
                # Stateless greedy: a lone pick is the chain's pick whenever it is allowed.
                self._fast = ll.llama_sampler_init_greedy()
                if not self._fast:
                    raise RuntimeError("llama.cpp could not create the greedy sampler")
                self._grammar = sampler
                self._one = (ll.llama_token_data * 1)()
                self._one_array = ll.llama_token_data_array(self._one, 1, -1, False)
                self._n_vocab = int(ll.llama_vocab_n_tokens(vocab))
                self._top = np.zeros(min(CANDIDATES, self._n_vocab), dtype=_TOKEN_DATA)
                self._top_array = ll.llama_token_data_array(
                    self._top.ctypes.data_as(ctypes.POINTER(ll.llama_token_data)),
                    len(self._top),
                    -1,
                    False,
                )
        if generation.repeat_penalty != 1.0:
            # The first argument is penalty_last_n in llama.cpp's 4-argument signature; the
            # binding declares an older 5-argument one, so both ints carry the same value.
            self._add(
                ll.llama_sampler_init_penalties(
                    PENALTY_LAST_N, PENALTY_LAST_N, generation.repeat_penalty, 0.0, 0.0
                ),
                "penalties",
            )
        if generation.temperature <= 0:
            self._add(ll.llama_sampler_init_greedy(), "greedy")
        else:
            seed = generation.seed if generation.seed is not None else default_seed
            if generation.top_k > 0:
                self._add(ll.llama_sampler_init_top_k(generation.top_k), "top_k")
            self._add(ll.llama_sampler_init_top_p(generation.top_p, 1), "top_p")
            self._add(ll.llama_sampler_init_min_p(generation.min_p, 1), "min_p")
            self._add(ll.llama_sampler_init_temp(generation.temperature), "temperature")
            self._add(ll.llama_sampler_init_dist(seed), "dist")

    def _add(self, sampler: Any, name: str) -> None:
        """Add a sampler the chain then owns; a NULL one is an error, never added."""
        if not sampler:
            raise RuntimeError(f"llama.cpp could not create the {name} sampler")
        self._ll.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits at batch position `index` and accept the token."""
        ll = self._ll
        if self._fast is None:
            # llama_sampler_sample also accepts the token into the chain's state.
            token: int = ll.llama_sampler_sample(self._chain, ctx, index)
            return token
        started = time.thread_time()
        stats = self.grammar_stats
        stats.samples += 1
        token = ll.llama_sampler_sample(self._fast, ctx, index)
        one = self._one[0]
        one.id, one.logit, one.p = token, 1.0, 0.0
        self._one_array.size, self._one_array.selected = 1, -1
        ll.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        if math.isfinite(one.logit):  # the grammar allows the best token: take it
            stats.first_pick += 1
        else:
            found = self._best_candidate(ctx, index) if len(self._top) else None
            if found is not None:
                stats.candidates += 1
                token = found
            else:
                # The best token the grammar allows, over the whole vocabulary (accepted).
                whole = time.thread_time()
                token = ll.llama_sampler_sample(self._chain, ctx, index)
                stats.whole_vocabulary += 1
                stats.whole_vocabulary_seconds += time.thread_time() - whole
                stats.seconds += time.thread_time() - started
                return int(token)
        ll.llama_sampler_accept(self._chain, token)  # the grammar advances with it
        stats.seconds += time.thread_time() - started
        return int(token)

    def _best_candidate(self, ctx: Any, index: int) -> int | None:
        """The best token the grammar allows if it is among the best CANDIDATES and scores
        above the lowest of them (so no token outside them can tie), else None."""
        ll = self._ll
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, index), (self._n_vocab,))
        k = len(self._top)
        ids = np.argpartition(logits, self._n_vocab - k)[self._n_vocab - k :]
        top = self._top
        top["id"] = ids
        top["logit"] = logits[ids]
        top["p"] = 0.0
        floor = float(top["logit"].min())
        self._top_array.size, self._top_array.selected = k, -1
        self._top_array.sorted = False
        ll.llama_sampler_apply(self._grammar, ctypes.byref(self._top_array))
        # The grammar sets refused tokens to -inf and may reorder nothing; read what it left.
        allowed = top[: self._top_array.size]
        allowed = allowed[np.isfinite(allowed["logit"])]
        if len(allowed) == 0:
            return None
        best = float(allowed["logit"].max())
        if best <= floor:  # a token outside the candidates may score the same
            return None
        return int(allowed["id"][allowed["logit"] == best].min())

    def free(self) -> None:
        self._grammar = None  # the chain frees it
        for name in ("_chain", "_fast"):
            sampler = getattr(self, name, None)
            if sampler is not None:
                self._ll.llama_sampler_free(sampler)
                setattr(self, name, None)
