"""The GPU-offload decision: refuse GPU layers a build cannot honour, with the fix."""

from __future__ import annotations

from worker.llm.backends import offload_error


def test_no_gpu_layers_needs_no_gpu() -> None:
    assert offload_error(0, supported=False, backends=("CPU",)) is None


def test_a_gpu_build_takes_any_number_of_layers() -> None:
    assert offload_error(-1, supported=True, backends=("CUDA", "CPU")) is None
    assert offload_error(20, supported=True, backends=("CUDA", "CPU")) is None


def test_gpu_layers_on_a_cpu_build_say_how_to_rebuild() -> None:
    for layers in (-1, 1, 99):
        message = offload_error(layers, supported=False, backends=("CPU",))
        assert message is not None
        assert f"n_gpu_layers is {layers}" in message
        assert "backends: CPU" in message
        assert "make install CMAKE_ARGS=-DGGML_CUDA=on" in message
        assert "make wheelhouse CMAKE_ARGS=-DGGML_CUDA=on" in message
        assert "n_gpu_layers = 0" in message


def test_an_unknown_backend_list_still_reads() -> None:
    message = offload_error(-1, supported=False, backends=())
    assert message is not None and "backends: CPU" in message
