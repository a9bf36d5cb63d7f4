"""Memory: the estimate against what llama.cpp allocated for the real model, the sliding
window arithmetic, the budget's parsing, and reading cgroup limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import model_path
from tests.unit.test_gguf import write_gguf
from worker.llm.gguf import read_header
from worker.llm.memory import (
    DAEMON_RESERVE,
    Budget,
    BudgetError,
    EngineShape,
    Memory,
    MiB,
    cgroup_limit_paths,
    estimate,
    parse_budget,
    parse_cgroup_limit,
    parse_meminfo,
    parse_size,
    swa_layers,
)

# What llama.cpp 0.3.36 logged for the default Gemma 3 270M, loaded by BatchedEngine
# (parallel slots + 2 prefix-cache sequences, full-size sliding windows, n_batch 512):
# (n_ctx, parallel, n_ubatch) -> KV, output and compute buffers in MiB. The weights were
# "CPU_Mapped model buffer size = 235.16 MiB" each time. notes/models.md has the runs.
LLAMA_CPP_BUFFERS = {
    (2048, 2, 512): (144.00, 4.00, 514.50),
    (512, 1, 512): (27.00, 3.00, 514.50),
    (4096, 8, 512): (720.00, 10.00, 514.52),
    (1024, 4, 256): (108.00, 6.00, 257.26),
    (8192, 1, 512): (432.00, 3.00, 514.50),
}
# The estimate must be this close to llama.cpp's own total.
MARGIN = 0.01


def _shape(n_ctx: int, parallel: int, n_ubatch: int) -> EngineShape:
    return EngineShape(n_ctx=n_ctx, n_seq=parallel + 2, n_ubatch=n_ubatch, n_batch=n_ubatch)


@pytest.mark.parametrize("config", sorted(LLAMA_CPP_BUFFERS))
def test_the_estimate_is_what_llama_cpp_allocated(config: tuple[int, int, int]) -> None:
    header = read_header(model_path())
    got = estimate(header, _shape(*config))
    kv, outputs, compute = LLAMA_CPP_BUFFERS[config]
    assert got.weights / MiB == pytest.approx(235.16, abs=0.01)
    assert got.kv / MiB == kv  # exact: the cache is the part that grows with settings
    assert got.outputs / MiB == outputs
    assert got.compute / MiB == pytest.approx(compute, abs=0.05)
    llama_total = (235.16 + kv + outputs + compute) * MiB
    assert abs(got.total - llama_total) <= MARGIN * llama_total
    assert got.layout.swa_layers == 15  # Gemma 3: five sliding-window layers in six


def test_sliding_window_layers_are_counted_as_llama_cpp_sizes_them() -> None:
    header = read_header(model_path())
    full = estimate(header, EngineShape(n_ctx=2048, n_seq=4, n_ubatch=512, n_batch=512))
    small = estimate(
        header, EngineShape(n_ctx=2048, n_seq=4, n_ubatch=512, n_batch=512, swa_full=False)
    )
    cell = 1 * (256 + 256) * 2  # one KV head of 256, keys and values, f16
    # swa_full: every layer holds the whole context (the generation engine needs it).
    assert full.kv == 18 * 2048 * 4 * cell
    # Otherwise a sliding-window layer keeps its window plus a ubatch: 512 + 512 cells.
    assert small.kv == (3 * 2048 + 15 * 1024) * 4 * cell
    assert small.layout.swa_cells == 1024
    # A unified cache (one stream) sizes the window for every sequence at once.
    unified = estimate(
        header,
        EngineShape(n_ctx=2048, n_seq=4, n_ubatch=512, n_batch=512, unified=True, swa_full=False),
    )
    assert unified.layout.cells == 2048 and unified.layout.streams == 1
    assert unified.layout.swa_cells == 2048  # min(2048, 512 * 4 + 512)
    assert "15 of them sliding-window" in full.describe()


def test_the_sliding_window_pattern_by_architecture_and_by_metadata(tmp_path: Path) -> None:
    def header(arch: str, **extra: object) -> object:
        meta = {"general.architecture": arch, f"{arch}.attention.sliding_window": 256}
        meta.update({f"{arch}.{k}": v for k, v in extra.items()})
        return read_header(write_gguf(tmp_path / f"{arch}.gguf", meta, [], 0))

    assert swa_layers(header("gemma2"), 4) == [True, False, True, False]  # type: ignore[arg-type]
    assert swa_layers(header("gemma3"), 7) == [True] * 5 + [False, True]  # type: ignore[arg-type]
    declared = header("llama", **{"attention.sliding_window_pattern": 3})
    assert swa_layers(declared, 4) == [True, True, False, True]  # type: ignore[arg-type]
    unknown = header("mystery")
    assert swa_layers(unknown, 3) == [False, False, False]  # type: ignore[arg-type]


def test_a_budget_is_bytes_or_a_share() -> None:
    assert parse_budget("70%") == Budget(share=0.7)
    assert parse_budget("8GiB") == Budget(bytes=8 << 30)
    assert parse_budget("8G") == Budget(bytes=8 << 30)  # as systemd's MemoryMax=
    assert parse_budget("1.5GB") == Budget(bytes=1_500_000_000)
    assert parse_budget("512M") == Budget(bytes=512 << 20)
    assert parse_budget(1000) == Budget(bytes=1000)
    assert parse_size(" 64 KiB ") == 64 << 10
    for bad in ("0%", "150%", "lots", "12 parsecs", "-5", "0"):
        with pytest.raises(BudgetError):
            parse_budget(bad)
    limit = 4 << 30
    assert Budget(share=0.5).resolve(limit) == 2 << 30
    assert Budget(bytes=1 << 30).resolve(limit) == 1 << 30
    # Bytes above the limit (RAM or the cgroup's) are capped, leaving the daemon its share.
    assert Budget(bytes=16 << 30).resolve(limit) == limit - DAEMON_RESERVE
    assert Budget(share=0.75).describe() == "75%"


def test_memory_adds_up_and_fits_on_both_devices() -> None:
    a, b = Memory(100, 10), Memory(50, 0)
    assert a + b == Memory(150, 10)
    assert (a + b).fits(Memory(150, 10))
    assert not a.fits(Memory(1000, 5))  # the GPU part does not fit
    assert a.larger(Memory(120, 0)) == Memory(120, 10)


def test_host_limits_from_proc_and_cgroups() -> None:
    assert parse_meminfo("MemTotal:       24683772 kB\nMemFree: 1 kB\n") == 24683772 * 1024
    assert parse_cgroup_limit("max\n") is None
    assert parse_cgroup_limit("9223372036854771712\n") is None  # v1's "no limit"
    assert parse_cgroup_limit("2147483648\n") == 2 << 30
    v2 = cgroup_limit_paths("0::/system.slice/edge-worker.service\n", Path("/cg"))
    assert v2 == [
        Path("/cg/system.slice/edge-worker.service/memory.max"),
        Path("/cg/system.slice/memory.max"),
        Path("/cg/memory.max"),
    ]
    v1 = cgroup_limit_paths("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n", Path("/cg"))
    assert v1 == [
        Path("/cg/memory/docker/abc/memory.limit_in_bytes"),
        Path("/cg/memory/docker/memory.limit_in_bytes"),
        Path("/cg/memory/memory.limit_in_bytes"),
    ]
