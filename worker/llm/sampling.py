"""Per-sequence llama.cpp sampler chains built from a pipeline's generation parameters."""

from __future__ import annotations

from typing import Any

from worker.llm.generation import Generation
from worker.llm.grammar import UnsupportedSchema, compile_grammar

# Tokens of history the repetition penalty looks at.
PENALTY_LAST_N = 64


class SamplerChain:
    """A llama.cpp sampler chain: penalties, then greedy or top-k/top-p/min-p/temperature.

    llama.cpp answers a sampler it cannot build with NULL, and a NULL sampler in a chain
    crashes the process at the first token: every sampler is checked before it is added,
    and a grammar llama.cpp refuses is an UnsupportedSchema for this request alone.
    """

    def __init__(self, ll: Any, vocab: Any, generation: Generation, default_seed: int) -> None:
        self._ll = ll
        params = ll.llama_sampler_chain_default_params()
        params.no_perf = True
        self._chain = ll.llama_sampler_chain_init(params)
        if not self._chain:
            raise RuntimeError("llama.cpp could not create a sampler chain")
        try:
            self._build(vocab, generation, default_seed)
        except BaseException:
            self.free()  # the samplers added so far belong to the chain
            raise

    def _build(self, vocab: Any, generation: Generation, default_seed: int) -> None:
        ll = self._ll
        if generation.json_schema is not None:
            # The grammar first: every later step only sees tokens the schema allows.
            grammar = compile_grammar(generation.json_schema, generation.max_tokens)
            sampler = ll.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not sampler:
                raise UnsupportedSchema(
                    "llama.cpp refused the grammar of this JSON Schema with the model's "
                    "vocabulary: simplify the schema"
                )
            self._add(sampler, "grammar")
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
        # llama_sampler_sample also accepts the token into the chain's state.
        token: int = self._ll.llama_sampler_sample(self._chain, ctx, index)
        return token

    def free(self) -> None:
        if self._chain is not None:
            self._ll.llama_sampler_free(self._chain)
            self._chain = None
