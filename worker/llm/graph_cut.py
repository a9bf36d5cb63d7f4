"""Stop llama.cpp's compute graph where an embedding's token vectors are ready.

A llama.cpp context in embeddings mode still builds and computes the model's output
projection (lm_head: hidden size x vocabulary) for every token, though nothing reads
those logits. For Gemma 3 270M that projection is 262,144 x 640, more than half of each
token's arithmetic: measured on 510 tokens (2 threads), 1.59 s per decode call with it
and 0.69 s without, with bit-identical token vectors.

llama.cpp's scheduler takes an eval callback (`cb_eval`): asked per node whether the
caller wants to see it, it computes up to that node, shows it, and stops the rest of
that scheduler split when the callback then answers false. `GraphCut` asks for the
node that holds the token vectors (named `result_embd_pooled` when llama.cpp's pooling
is off, as the embedding engine runs it) and stops there. On a CPU-only context (one
split) nothing after it, the logits included, is computed; with part of the model
offloaded, later splits still run.

Whether the cut is sound for a given model is measured, not assumed: the engine decodes
a probe whole and cut at load and keeps the cut only if the cut did stop and the
vectors agree (`vectors_agree`). A model whose graph changes the vectors after that
node (dense output layers, a renamed node) runs whole, without the callback.

The callback runs in Python, once per graph node and decode call, all before the
computing starts: a few microseconds each (about 700 nodes for Gemma 3 270M). Measured
beside a thread spinning in pure Python, the cut kept its whole 2x: its GIL waits are
lost in the noise.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# The name llama.cpp's pooling step gives the token vectors (t_embd) with pooling off.
TOKEN_VECTORS_NODE = b"result_embd_pooled"
# How far the cut's token vectors may be from the whole graph's, relative to their size.
MAX_PROBE_DIFFERENCE = 1e-4


def _name_reader() -> Callable[[int], bytes | None] | None:
    """`ggml_get_name` as libllama itself resolves it (the same ggml), or None."""
    try:
        from llama_cpp import llama_cpp as binding

        get_name = binding._lib.ggml_get_name
        get_name.restype = ctypes.c_char_p
        get_name.argtypes = [ctypes.c_void_p]
    except (ImportError, AttributeError, OSError, RuntimeError) as exc:
        log.info("no ggml_get_name in this llama.cpp build (%s): embeddings run whole", exc)
        return None
    return get_name  # type: ignore[no-any-return]


class GraphCut:
    """An eval callback for one context that stops its graph at the token vectors."""

    def __init__(self, ll: Any) -> None:
        self.enabled = False  # set by the engine for the probe, kept if the probe agreed
        self.stopped = False  # whether a decode call stopped at the node (the probe's)
        self.available = False
        self._callback: Any = None
        get_name = _name_reader()
        if get_name is None or not hasattr(ll, "ggml_backend_sched_eval_callback"):
            return

        def on_node(tensor: int, ask: bool, _user_data: int) -> bool:
            if not self.enabled:
                return False  # asked: "no" to every node, so the graph runs as one piece
            if ask:
                return get_name(tensor) == TOKEN_VECTORS_NODE
            self.stopped = True
            return False  # shown the token vectors: stop the graph here

        # Kept on self: llama.cpp holds only the C pointer, which must outlive the context.
        self._callback = ll.ggml_backend_sched_eval_callback(on_node)
        self.available = True

    def install(self, cparams: Any) -> None:
        """Put the callback into a context's parameters (before the context is made)."""
        if self.available:
            cparams.cb_eval = self._callback
            cparams.cb_eval_user_data = None


def vectors_agree(whole: np.ndarray[Any, Any], cut: np.ndarray[Any, Any]) -> bool:
    """Whether the token vectors of a cut graph equal those of the whole one, up to
    float noise relative to their largest value."""
    if whole.shape != cut.shape or not np.isfinite(cut).all():
        return False
    scale = max(float(np.max(np.abs(whole), initial=0.0)), 1e-6)
    return float(np.max(np.abs(whole - cut), initial=0.0)) <= MAX_PROBE_DIFFERENCE * scale
