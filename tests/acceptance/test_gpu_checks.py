"""GPU checks: `model info` names the build's backends, and asking a CPU-only build for
GPU layers stops start-up with the way to rebuild, before any job is claimed."""

from __future__ import annotations

import re
from pathlib import Path

import llama_cpp
import pytest

from tests.acceptance.conftest import DOCUMENT
from tests.acceptance.daemon import run_cli

pytestmark = pytest.mark.timeout(240)

CPU_ONLY = not llama_cpp.llama_supports_gpu_offload()
needs_cpu_build = pytest.mark.skipif(not CPU_ONLY, reason="this llama-cpp-python can offload")


@needs_cpu_build
@pytest.mark.parametrize("layers", ["-1", "12"])
def test_gpu_layers_on_a_cpu_build_stop_start_up_before_any_job(
    data_dir: Path, env: dict[str, str], layers: str
) -> None:
    inbox = data_dir / "inbox" / "summarize"
    inbox.mkdir(parents=True)
    (inbox / "report.txt").write_text(DOCUMENT)

    result = run_cli({**env, "EDGE_WORKER_N_GPU_LAYERS": layers}, "run", "--once")

    assert result.returncode == 3, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert f"n_gpu_layers is {layers} but this llama-cpp-python build cannot offload" in message
    assert "backends: CPU" in message
    assert "make install CMAKE_ARGS=-DGGML_CUDA=on" in message
    # Refused before the database was even opened: nothing claimed, the file untouched.
    assert not (data_dir / "jobs.db").exists()
    assert [p.name for p in inbox.iterdir()] == ["report.txt"]
    assert not (data_dir / "outbox").exists()


@needs_cpu_build
def test_model_info_shows_the_build_even_when_it_refuses_gpu_layers(env: dict[str, str]) -> None:
    result = run_cli({**env, "EDGE_WORKER_N_GPU_LAYERS": "-1"}, "model", "info")
    assert result.returncode == 3
    table = " ".join(result.stdout.split())
    assert re.search(r"backends\W+CPU\b", table), table
    assert "GPU offload │ no (CPU-only build)" in table
    assert "cannot offload to a GPU" in result.stderr


def test_model_info_shows_backends_devices_and_offload(env: dict[str, str]) -> None:
    result = run_cli(env, "model", "info")
    assert result.returncode == 0, result.stderr
    table = " ".join(result.stdout.split())
    assert f"llama-cpp-python │ {llama_cpp.__version__}" in table
    offload = "yes" if not CPU_ONLY else "no (CPU-only build)"
    assert f"GPU offload │ {offload}" in table
    assert re.search(r"device 0 │ CPU ", table) or re.search(r"device 0 │ I?GPU ", table), table
    assert "gemma3" in table  # and the model part still follows


@pytest.mark.gpu
@pytest.mark.skipif(CPU_ONLY, reason="needs a GPU build of llama-cpp-python (CMAKE_ARGS)")
def test_a_gpu_build_lists_a_gpu_and_runs_with_all_layers_offloaded(env: dict[str, str]) -> None:
    result = run_cli({**env, "EDGE_WORKER_N_GPU_LAYERS": "-1"}, "model", "info")
    assert result.returncode == 0, result.stderr
    table = " ".join(result.stdout.split())
    assert "GPU offload │ yes" in table
    assert re.search(r"device \d+ │ I?GPU ", table), table
