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
# Stateless greedy sampling picks with numpy's argmax instead of llama.cpp's sampler chain
# (the same token; about 1 ms less per token for a 262,144-token vocabulary).
ARGMAX = True
# How many of the best tokens a refusal asks the grammar about, in turn, before the whole
# vocabulary (empty: straight to the whole vocabulary, as before).
CANDIDATES: tuple[int, ...] = (256, 8192)
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
        # Stateless greedy (temperature 0, no penalty): picked with numpy, not the chain.
        stateless = generation.temperature <= 0 and generation.repeat_penalty == 1.0
        self._argmax = ARGMAX and stateless
        self._vocab = vocab
        self._n_vocab = 0  # read when first needed
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
            if LAZY_GRAMMAR and self._argmax:
                self._n_vocab = int(ll.llama_vocab_n_tokens(vocab))
                self._grammar = sampler
                self._one = (ll.llama_token_data * 1)()
                self._one_array = ll.llama_token_data_array(self._one, 1, -1, False)
                size = min(max(CANDIDATES, default=0), self._n_vocab)
                self._top = np.zeros(size, dtype=_TOKEN_DATA)
                self._top_array = ll.llama_token_data_array(
                    self._top.ctypes.data_as(ctypes.POINTER(ll.llama_token_data)), size, -1, False
                )
            else:
                self._argmax = False  # the grammar on every token: the chain samples
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
        if not self._argmax:
            # llama_sampler_sample also accepts the token into the chain's state.
            token: int = ll.llama_sampler_sample(self._chain, ctx, index)
            return token
        # Stateless greedy: numpy's argmax is llama.cpp's greedy pick (the first of the
        # highest logits) without copying 262,144 candidates into a C++ vector first.
        if not self._n_vocab:
            self._n_vocab = int(ll.llama_vocab_n_tokens(self._vocab))
        logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, index), (self._n_vocab,))
        token = int(np.argmax(logits))
        if math.isnan(logits[token]):  # llama.cpp's greedy never picks a NaN: let it pick
            token = ll.llama_sampler_sample(self._chain, ctx, index)
            return token
        if self._grammar is None:
            return token  # greedy keeps no state: nothing to accept
        return self._lazy_grammar(ctx, index, logits, token)

    def _lazy_grammar(self, ctx: Any, index: int, logits: Any, token: int) -> int:
        """The best token the grammar allows, trying the best token, then the best
        CANDIDATES, before the whole vocabulary; accepted into the chain."""
        ll = self._ll
        started = time.thread_time()
        stats = self.grammar_stats
        stats.samples += 1
        one = self._one[0]
        one.id, one.logit, one.p = token, 1.0, 0.0
        self._one_array.size, self._one_array.selected = 1, -1
        ll.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        if math.isfinite(one.logit):  # the grammar allows the best token: take it
            stats.first_pick += 1
        else:
            found = None
            for k in CANDIDATES:
                found = self._best_candidate(logits, min(k, self._n_vocab))
                if found is not None:
                    break
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

    def _best_candidate(self, logits: Any, k: int) -> int | None:
        """The best token the grammar allows if it is among the best `k` and scores above
        the lowest of them (so no token outside them can tie), else None."""
        ll = self._ll
        n_vocab = self._n_vocab
        ids = np.argpartition(logits, n_vocab - k)[n_vocab - k :]
        top = self._top[:k]
        top["id"] = ids
        top["logit"] = logits[ids]
        top["p"] = 0.0
        floor = float(top["logit"].min())
        self._top_array.size, self._top_array.selected = k, -1
        self._top_array.sorted = False
        ll.llama_sampler_apply(self._grammar, ctypes.byref(self._top_array))
        # The grammar sets refused tokens to -inf in place (it neither drops nor reorders).
        allowed = top[np.isfinite(top["logit"])]
        if len(allowed) == 0:
            return None
        best = float(allowed["logit"].max())
        if best <= floor:  # a token outside the candidates may score the same
            return None
        return int(allowed["id"][allowed["logit"] == best].min())

    def free(self) -> None:
        self._grammar = None  # the chain frees it
        if self._chain is not None:
            self._ll.llama_sampler_free(self._chain)
            self._chain = None
