"""Per-sequence llama.cpp sampler chains built from a pipeline's generation parameters."""

from __future__ import annotations

import json
from typing import Any

from worker.llm.generation import Generation
from worker.llm.grammar import gbnf

# Tokens of history the repetition penalty looks at.
PENALTY_LAST_N = 64


class SamplerChain:
    """A llama.cpp sampler chain: penalties, then greedy or top-k/top-p/min-p/temperature."""

    def __init__(self, ll: Any, vocab: Any, generation: Generation, default_seed: int) -> None:
        self._ll = ll
        params = ll.llama_sampler_chain_default_params()
        params.no_perf = True
        self._chain = ll.llama_sampler_chain_init(params)
        add = ll.llama_sampler_chain_add
        if generation.json_schema is not None:
            # The grammar first: every later step only sees tokens the schema allows.
            grammar = gbnf(json.dumps(generation.json_schema))
            add(self._chain, ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root"))
        if generation.repeat_penalty != 1.0:
            # The first argument is penalty_last_n in llama.cpp's 4-argument signature; the
            # binding declares an older 5-argument one, so both ints carry the same value.
            add(
                self._chain,
                ll.llama_sampler_init_penalties(
                    PENALTY_LAST_N, PENALTY_LAST_N, generation.repeat_penalty, 0.0, 0.0
                ),
            )
        if generation.temperature <= 0:
            add(self._chain, ll.llama_sampler_init_greedy())
        else:
            seed = generation.seed if generation.seed is not None else default_seed
            if generation.top_k > 0:
                add(self._chain, ll.llama_sampler_init_top_k(generation.top_k))
            add(self._chain, ll.llama_sampler_init_top_p(generation.top_p, 1))
            add(self._chain, ll.llama_sampler_init_min_p(generation.min_p, 1))
            add(self._chain, ll.llama_sampler_init_temp(generation.temperature))
            add(self._chain, ll.llama_sampler_init_dist(seed))

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits at batch position `index` and accept the token."""
        # llama_sampler_sample also accepts the token into the chain's state.
        token: int = self._ll.llama_sampler_sample(self._chain, ctx, index)
        return token

    def free(self) -> None:
        if self._chain is not None:
            self._ll.llama_sampler_free(self._chain)
            self._chain = None
