"""Shutting down an engine's llama.cpp state, shared by the generation and embedding
engines: the decode thread is joined within a bound, and the context is freed only if
that thread has ended (a llama_decode call that never returns may still touch it)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from worker.liveness import LIVENESS, Heartbeat

log = logging.getLogger(__name__)


def join_decoder(thread: threading.Thread, heartbeat: Heartbeat, timeout: float, what: str) -> bool:
    """Join the decode thread for at most `timeout` seconds and drop its heartbeat; False
    (logged) if it still runs: then nothing may be freed, the memory goes with the
    process."""
    thread.join(timeout=timeout)
    LIVENESS.unregister(heartbeat)
    if thread.is_alive():
        log.error(
            "the %s is still running after %.1f s: llama.cpp's memory is not freed "
            "(a context in use must not be)",
            what,
            timeout,
        )
        return False
    return True


def free_native(ll: Any, batch: Any, ctx: Any, model: Any) -> None:
    """Free a batch, its context and the model, in that order."""
    ll.llama_batch_free(batch)
    ll.llama_free(ctx)
    ll.llama_model_free(model)
