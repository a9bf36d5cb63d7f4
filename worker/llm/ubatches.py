"""How llama.cpp splits a decode call into weight passes, and the batch layout that keeps
it to one.

With one KV stream per sequence (the engine's default), llama.cpp cuts each
`llama_decode` batch into micro-batches by `split_equal(n_ubatch, sequential=true)`: a
micro-batch holds sequences whose ids run consecutively in the order their tokens appear,
and the same number of tokens from each. Every micro-batch is a whole pass over the
weights (about 24 ms on 2 cores for Gemma 3 270M, whatever it holds). A batch of 8
running tokens in the order the sequences started (ids 3, 0, 5, 1, ...) costs several
passes; the same tokens in id order cost one. So the engine lays out each call by
sequence id, gives every running sequence the same number of draft tokens, and hands a
new sequence the lowest free id; `weight_passes` counts what a layout costs, for the
engine's counters and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence


def weight_passes(seq_ids: Sequence[int], n_ubatch: int) -> int:
    """Micro-batches llama.cpp makes of a batch whose tokens belong to `seq_ids` (in batch
    order, one sequence a token), as `llama_batch_allocr::split_equal(n_ubatch, true)`."""
    used = [False] * len(seq_ids)
    passes = 0
    while not all(used):
        members: list[int] = []
        for i, seq in enumerate(seq_ids):
            if used[i] or seq in members:
                continue
            if members and seq != members[-1] + 1:
                continue  # only consecutive ids join a micro-batch
            members.append(seq)
            if len(members) > n_ubatch:
                break
        left = {s: [i for i, x in enumerate(seq_ids) if x == s and not used[i]] for s in members}
        take = max(1, min(min(len(v) for v in left.values()), n_ubatch // len(members)))
        for indices in left.values():
            for i in indices[:take]:
                used[i] = True
        passes += 1
    return passes


def common_draft_length(lengths: Sequence[int]) -> int:
    """The draft length every running sequence gets in one call: the median of what their
    lookups found (shorter drafts are padded, longer ones cut), so the call stays one
    micro-batch; 0 when fewer than half found any."""
    if not lengths:
        return 0
    ordered = sorted(lengths)
    return ordered[(len(ordered) - 1) // 2]
