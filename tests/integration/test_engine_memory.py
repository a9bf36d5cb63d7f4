"""Memory per job with the real engine: nothing a completion allocates may wait for the
cyclic garbage collector (found by the soak: ~3 MB per job until a GC ran)."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.llm.batched import BatchedEngine, BatchOptions
from worker.llm.engine import EngineOptions
from worker.llm.generation import Generation
from worker.llm.model_files import ModelFile

pytestmark = pytest.mark.timeout(240)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_in_use() -> int:
    """Bytes malloc has handed out and not had back (glibc's mallinfo2().uordblks)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc 2.33+ (mallinfo2)")
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().uordblks)


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The cyclic GC off: memory that only it would free stays visible."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def test_completions_do_not_leave_memory_for_the_garbage_collector(gguf: Path, no_gc: None) -> None:
    engine = BatchedEngine(
        ModelFile("gemma-3-270m", gguf, None),
        EngineOptions(n_ctx=512),
        BatchOptions(parallel=1),
        verify=False,
    )
    gen = Generation(max_tokens=2, temperature=0)
    engine.complete("order 0: 3 crates ->", gen, lambda: False)  # warm-up allocations
    before = heap_in_use()
    jobs = 6
    for i in range(1, jobs + 1):
        engine.complete(f"order {i}: {i * 7} crates, day {i} ->", gen, lambda: False)
    grown = heap_in_use() - before
    # Before the fix: +3 MB per completion (the sampler chain sized to the 262k vocabulary).
    engine.close()
    assert grown < jobs * 512 * 1024, f"heap grew {grown / 2**20:.1f} MB in {jobs} completions"
