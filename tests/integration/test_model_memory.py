"""The memory estimate against what llama.cpp allocates for the real model, measured by the
model manager at load time (and once with sliding windows sized to the window, as a
context without `swa_full` gets them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.config import load_settings
from worker.llm.gguf import read_header
from worker.llm.llama_logs import captured_lines, route_llama_logs
from worker.llm.manager import reported_buffers
from worker.llm.memory import EngineShape, estimate
from worker.llm.serving import build_manager, memory_budget

pytestmark = pytest.mark.timeout(240)
MARGIN = 0.01  # of llama.cpp's own total


def test_a_load_takes_what_the_estimate_said(tmp_path: Path, gguf: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path,
        models={"m": {"path": str(gguf), "n_ctx": 1024, "parallel": 3}},
        n_threads=1,
        # The estimate sizes the weights once. Repacked weights (llama.cpp's extra buffer
        # types, on where the start-up probe finds they work) add a copy of the tensors
        # it repacks (12.7 MiB of this model on AVX-512): the manager takes that from
        # the measurement after the first load (the larger figure counts).
        repack_weights=False,
    )
    budget = memory_budget(settings, host_limit=8 << 30, gpu_limits=[])
    manager, _ = build_manager(settings, ["m"], budget=budget)
    try:
        manager.load("m")
        (view,) = manager.views()
        assert view.measured is not None
        # measured = max(RSS growth, llama.cpp's buffers); the buffers are the larger here.
        assert abs(view.measured.host - view.estimate.total) <= MARGIN * view.estimate.total
        assert view.memory.host >= view.estimate.total
    finally:
        manager.close()


def test_sliding_windows_without_swa_full_are_sized_as_estimated(gguf: Path) -> None:
    import llama_cpp

    route_llama_logs()
    shape = EngineShape(n_ctx=2048, n_seq=4, n_ubatch=256, n_batch=256, swa_full=False)
    expected = estimate(read_header(gguf), shape)
    ll: Any = llama_cpp
    mparams = ll.llama_model_default_params()
    mparams.use_extra_bufts = False  # no repacked copy: see the test above
    with captured_lines() as lines:
        model = ll.llama_model_load_from_file(str(gguf).encode(), mparams)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = shape.n_ctx * shape.n_seq
        cparams.n_seq_max = shape.n_seq
        cparams.n_batch = shape.n_batch
        cparams.n_ubatch = shape.n_ubatch
        cparams.kv_unified = False
        cparams.swa_full = False
        cparams.n_threads = 1
        ctx = ll.llama_init_from_model(model, cparams)
    try:
        assert ctx
        got = reported_buffers(lines)
        assert expected.layout.swa_cells == 768  # 512-token window + a 256-token ubatch
        assert any("SWA KV cache, size = 768 cells" in line for line in lines), lines
        assert abs(got.host - expected.total) <= MARGIN * got.host
    finally:
        ll.llama_free(ctx)
        ll.llama_model_free(model)
