"""Stop llama.cpp's compute graph where an embedding's token vectors are ready.

A llama.cpp context in embeddings mode still builds and computes the model's output
projection (lm_head: hidden size x vocabulary) for every token, and copies those logits
out, though nothing reads them. For Gemma 3 270M that projection is 262,144 x 640, more
than half of each token's arithmetic: measured on 510 tokens (2 threads), 1.59 s per
decode call with it and 0.69 s without, with bit-identical token vectors.

llama.cpp's scheduler takes an eval callback (`cb_eval`): asked per node whether the
caller wants to see it, it computes up to that node, shows it, and stops the graph when
the callback then answers false. `GraphCut` asks for the node that holds the token
vectors (named `result_embd_pooled` when llama.cpp's pooling is off, as the embedding
engine runs it) and stops there. Everything after it, the logits, is never computed.

Whether the cut is sound for a given model is measured, not assumed: `verified` decodes a
probe both ways at load and keeps the cut only if the vectors agree. A model whose graph
changes the vectors after that node (dense output layers, a renamed node) runs whole.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# The name llama.cpp's pooling step gives the token vectors (t_embd) with pooling off.
TOKEN_VECTORS_NODE = b"result_embd_pooled"
# Token vectors of the cut and the whole graph may differ by float noise at most.
MAX_PROBE_DIFFERENCE = 1e-4


def _name_reader(ll: Any) -> Callable[[int], bytes | None] | None:
    """`ggml_get_name` from the ggml that llama-cpp-python loaded, or None."""
    try:
        from llama_cpp import _ggml

        get_name = _ggml.libggml.ggml_get_name
        get_name.restype = ctypes.c_char_p
        get_name.argtypes = [ctypes.c_void_p]
    except (ImportError, AttributeError, OSError) as exc:
        log.info("no ggml_get_name in this llama.cpp build (%s): embeddings run whole", exc)
        return None
    return get_name  # type: ignore[no-any-return]


class GraphCut:
    """An eval callback for one context that stops its graph at the token vectors."""

    def __init__(self, ll: Any) -> None:
        self.enabled = False  # set by the engine once a probe agreed
        self.available = False
        self._get_name = _name_reader(ll)
        self._callback: Any = None
        if self._get_name is None or not hasattr(ll, "ggml_backend_sched_eval_callback"):
            return
        get_name = self._get_name

        def on_node(tensor: int, ask: bool, _user_data: int) -> bool:
            if not self.enabled:
                return False  # asked: "no" to every node, so the graph runs as one piece
            if ask:
                return get_name(tensor) == TOKEN_VECTORS_NODE
            return False  # shown the token vectors: stop the graph here

        # Kept on self: llama.cpp holds only the C pointer, which must outlive the context.
        self._callback = ll.ggml_backend_sched_eval_callback(on_node)
        self.available = True

    def install(self, cparams: Any) -> None:
        """Put the callback into a context's parameters (before the context is made)."""
        if self.available:
            cparams.cb_eval = self._callback
            cparams.cb_eval_user_data = None


def vectors_agree(whole: Any, cut: Any) -> bool:
    """Whether the token vectors of a cut graph equal those of the whole one."""
    import numpy as np

    return bool(
        whole.shape == cut.shape
        and np.isfinite(cut).all()
        and float(np.max(np.abs(whole - cut), initial=0.0)) <= MAX_PROBE_DIFFERENCE
    )
