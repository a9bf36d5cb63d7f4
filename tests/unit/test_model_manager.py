"""The model manager with a fake engine (loading, measuring, refusing to unload what is in
use), and the start-up plan of the served models against the real GGUF's header."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import model_path
from worker.config import load_settings
from worker.errors import ModelError
from worker.llm.loading import ModelConfig, thread_share
from worker.llm.manager import ModelManager, ModelRecord, ModelState, reported_buffers
from worker.llm.memory import EngineShape, KVLayout, Memory, MemoryEstimate, MiB
from worker.llm.model_files import ModelFile
from worker.llm.serving import memory_budget, most_resident, plan_records

ESTIMATE = MemoryEstimate(
    weights=100 * MiB,
    kv=20 * MiB,
    outputs=1 * MiB,
    compute=9 * MiB,
    layout=KVLayout(1, 0, 1, 1, 1, 1),
)


class FakeEngine:
    def __init__(self, size: int) -> None:
        self.buffer = b"\1" * size  # touched pages: the process's RSS grows
        self.closed = False

    def close(self) -> None:
        self.closed = True


def record(name: str) -> ModelRecord:
    config = ModelConfig(name=name, file=ModelFile(name, Path(f"/m/{name}.gguf"), None), parallel=2)
    return ModelRecord(config, EngineShape(512, 3, 512, 512), ESTIMATE, threads=1)


def manager(
    opened: list[FakeEngine], fail: set[str] | None = None, gate: Any = None
) -> ModelManager:
    def opener(config: ModelConfig, threads: int) -> FakeEngine:
        if gate is not None:
            gate.wait(10)
        if fail and config.name in fail:
            raise ModelError(f"cannot load model {config.name}")
        engine = FakeEngine(200 * MiB)  # more than the estimate: the measurement wins
        opened.append(engine)
        return engine

    return ModelManager({"a": record("a"), "b": record("b")}, opener)


def view(m: ModelManager, name: str) -> Any:
    return next(v for v in m.views() if v.name == name)


def test_a_load_is_measured_and_the_larger_figure_counts() -> None:
    opened: list[FakeEngine] = []
    m = manager(opened)
    assert view(m, "a").state == ModelState.UNLOADED
    assert view(m, "a").memory == Memory(ESTIMATE.total)
    m.load("a")
    a = view(m, "a")
    assert a.state == ModelState.IDLE and a.loads == 1  # loaded, nothing in hand
    assert a.measured is not None and a.measured.host >= 190 * MiB
    assert a.memory == a.measured  # larger than the estimate from now on
    assert m.engine("a") is opened[0]
    with pytest.raises(ModelError, match="'b' is not loaded"):
        m.engine("b")


def test_never_unloaded_while_a_job_is_in_hand() -> None:
    opened: list[FakeEngine] = []
    m = manager(opened)
    m.load("a")
    m.hold("a")
    assert view(m, "a").state == ModelState.RESIDENT
    assert not m.unload("a")
    assert not opened[0].closed
    m.release("a")
    assert m.unload("a")
    assert opened[0].closed
    a = view(m, "a")
    assert (a.state, a.evictions) == (ModelState.EVICTED, 1)


def test_never_unloaded_while_loading_and_one_load_at_a_time() -> None:
    gate = threading.Event()
    changed = threading.Event()
    opened: list[FakeEngine] = []
    m = manager(opened, gate=gate)
    m.on_change = changed.set
    assert m.start_loading("a")
    assert view(m, "a").state == ModelState.LOADING
    assert not m.start_loading("b")  # one load at a time
    assert not m.unload("a")
    gate.set()
    deadline = time.monotonic() + 10
    while not view(m, "a").loaded and time.monotonic() < deadline:
        time.sleep(0.02)
    assert view(m, "a").state == ModelState.IDLE
    assert changed.is_set()  # the dispatcher is woken
    m.close()
    assert opened[0].closed


def test_a_failed_load_is_recorded_and_tried_again_later() -> None:
    m = manager([], fail={"b"})
    with pytest.raises(ModelError, match="model 'b' failed to load: cannot load model b"):
        m.load("b")
    b = view(m, "b")
    assert b.state == ModelState.FAILED and b.error == "cannot load model b"
    assert b.retry_at > 0


def test_the_buffers_llama_cpp_reports_by_device() -> None:
    lines = [
        "load_tensors:   CPU_Mapped model buffer size =   235.16 MiB",
        "load_tensors:        CUDA0 model buffer size =  1000.00 MiB",
        "llama_context:        CPU  output buffer size =     4.00 MiB",
        "llama_kv_cache:        CPU KV buffer size =    24.00 MiB",
        "llama_kv_cache: size =   24.00 MiB (  2048 cells,   3 layers,  4/4 seqs)",
        "sched_reserve:  CUDA_Host compute buffer size =     2.00 MiB",
        "~llama_context:        CPU compute buffer size is 514.5020 MiB, matches expectation",
    ]
    got = reported_buffers(lines)
    assert got == Memory(int((235.16 + 4 + 24 + 2) * MiB), 1000 * MiB)


def test_served_models_are_checked_against_the_budget_with_the_arithmetic(
    tmp_path: Path,
) -> None:
    gguf = str(model_path())
    settings = load_settings(
        data_dir=tmp_path,
        models={
            "short": {"path": gguf, "n_ctx": 512, "parallel": 1},
            "long": {"path": gguf, "n_ctx": 8192, "parallel": 4},
        },
        memory_budget="1GiB",
    )
    budget = memory_budget(settings, host_limit=8 << 30, gpu_limits=[])
    assert budget.host == 1 << 30
    with pytest.raises(ModelError) as info:
        plan_records(settings, ["short", "long"], budget, cores=2, verify=False)
    message = str(info.value)
    assert message.startswith("model 'long' needs ")
    assert "KV cache 864.0 MiB (18 layers x 8192 cells x 6 sequences x 1024 bytes" in message
    assert "memory_budget allows 1.00 GiB (1.00 GiB of 8.00 GiB)" in message
    records = plan_records(settings, ["short"], budget, cores=2, verify=False)
    assert records["short"].estimate.kv == 27 * MiB
    assert records["short"].threads == 2  # alone in the budget: every core


def test_threads_are_split_between_the_models_that_fit_together() -> None:
    assert most_resident([Memory(5), Memory(3), Memory(4)], Memory(8)) == 2
    assert most_resident([Memory(9)], Memory(8)) == 0
    assert thread_share(2, cores=2) == 1
    assert thread_share(3, cores=2) == 1
    assert thread_share(1, cores=16) == 16


def test_engines_are_not_freed_at_close_while_a_slot_may_still_use_them(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[FakeEngine] = []
    m = manager(opened)
    m.load("a")
    m.leave_engines_to_exit()  # a slot outlived shutdown_timeout
    monkeypatch.setattr(logging.getLogger("edge_worker"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="edge_worker"):
        m.close()
    assert not opened[0].closed  # freeing it under the slot's thread: a use-after-free
    assert [r.getMessage() for r in caplog.records] == ["models.left_to_exit"]
    m2 = manager(opened)
    m2.load("a")
    m2.close()  # every slot finished: freed
    assert opened[1].closed
