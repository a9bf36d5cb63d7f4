"""What this build of llama.cpp can run on: its ggml backends, devices and GPU offload.

llama-cpp-python exposes `llama_supports_gpu_offload()`; the ggml backend registry
(`ggml_backend_reg_*`, `ggml_backend_dev_*`) is read through the libggml it loads. A
build without these symbols reports only what it can.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# enum ggml_backend_dev_type, in ggml-backend.h order.
_DEVICE_TYPES = ("CPU", "GPU", "IGPU", "ACCEL")

REBUILD_HINT = (
    "rebuild llama-cpp-python with a GPU backend: from a checkout "
    "`make install CMAKE_ARGS=-DGGML_CUDA=on` (Vulkan: -DGGML_VULKAN=on, ROCm: -DGGML_HIP=on), "
    "for a fleet `make wheelhouse CMAKE_ARGS=-DGGML_CUDA=on` and install that wheelhouse; "
    "or set n_gpu_layers = 0 (EDGE_WORKER_N_GPU_LAYERS=0) to run on the CPU"
)


@dataclass(frozen=True)
class Device:
    """One ggml device: its backend's name for it, description and kind (CPU, GPU...)."""

    name: str
    description: str
    kind: str


@dataclass(frozen=True)
class BuildInfo:
    """The llama.cpp build llama-cpp-python loaded."""

    version: str
    gpu_offload: bool
    backends: tuple[str, ...]
    devices: tuple[Device, ...]


def gpu_offload_supported() -> bool:
    """Can this build put model layers on a GPU (`llama_supports_gpu_offload`)?"""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def _bind(lib: Any, name: str, restype: Any, argtypes: list[Any]) -> Any:
    function = getattr(lib, name)
    function.restype = restype
    function.argtypes = argtypes
    return function


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else "?"


def _registry() -> tuple[tuple[str, ...], tuple[Device, ...]]:
    """Backend and device names from ggml's registry; empty if the build hides them."""
    try:
        from llama_cpp._ggml import libggml as lib

        reg_count = _bind(lib, "ggml_backend_reg_count", ctypes.c_size_t, [])
        reg_get = _bind(lib, "ggml_backend_reg_get", ctypes.c_void_p, [ctypes.c_size_t])
        reg_name = _bind(lib, "ggml_backend_reg_name", ctypes.c_char_p, [ctypes.c_void_p])
        dev_count = _bind(lib, "ggml_backend_dev_count", ctypes.c_size_t, [])
        dev_get = _bind(lib, "ggml_backend_dev_get", ctypes.c_void_p, [ctypes.c_size_t])
        dev_name = _bind(lib, "ggml_backend_dev_name", ctypes.c_char_p, [ctypes.c_void_p])
        dev_desc = _bind(lib, "ggml_backend_dev_description", ctypes.c_char_p, [ctypes.c_void_p])
        dev_type = _bind(lib, "ggml_backend_dev_type", ctypes.c_int, [ctypes.c_void_p])
    except (ImportError, OSError, AttributeError) as exc:  # older or unusual builds
        log.debug("ggml backend registry not available: %s", exc)
        return (), ()
    backends = tuple(_text(reg_name(reg_get(i))) for i in range(reg_count()))
    devices = []
    for i in range(dev_count()):
        device = dev_get(i)
        kind = dev_type(device)
        devices.append(
            Device(
                name=_text(dev_name(device)),
                description=_text(dev_desc(device)),
                kind=_DEVICE_TYPES[kind] if 0 <= kind < len(_DEVICE_TYPES) else str(kind),
            )
        )
    return backends, tuple(devices)


def build_info() -> BuildInfo:
    """The loaded llama.cpp build: version, GPU offload, backends and devices."""
    import llama_cpp

    backends, devices = _registry()
    return BuildInfo(
        version=str(getattr(llama_cpp, "__version__", "?")),
        gpu_offload=gpu_offload_supported(),
        backends=backends,
        devices=devices,
    )


def offload_error(n_gpu_layers: int, supported: bool, backends: tuple[str, ...]) -> str | None:
    """Why `n_gpu_layers` cannot be honoured by a build, or None if it can.

    llama.cpp itself would silently run every layer on the CPU.
    """
    if n_gpu_layers == 0 or supported:
        return None
    names = ", ".join(backends) or "CPU"
    return (
        f"n_gpu_layers is {n_gpu_layers} but this llama-cpp-python build cannot offload "
        f"to a GPU (backends: {names}); {REBUILD_HINT}"
    )


def gpu_memory() -> list[int]:
    """Total memory of each GPU device in bytes (empty without GPUs, or if the build hides
    `ggml_backend_dev_memory`)."""
    try:
        from llama_cpp._ggml import libggml as lib

        dev_count = _bind(lib, "ggml_backend_dev_count", ctypes.c_size_t, [])
        dev_get = _bind(lib, "ggml_backend_dev_get", ctypes.c_void_p, [ctypes.c_size_t])
        dev_type = _bind(lib, "ggml_backend_dev_type", ctypes.c_int, [ctypes.c_void_p])
        dev_memory = _bind(
            lib,
            "ggml_backend_dev_memory",
            None,
            [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
        )
    except (ImportError, OSError, AttributeError) as exc:
        log.debug("ggml device memory not available: %s", exc)
        return []
    totals = []
    for i in range(dev_count()):
        device = dev_get(i)
        kind = dev_type(device)
        if not 0 <= kind < len(_DEVICE_TYPES) or _DEVICE_TYPES[kind] not in ("GPU", "IGPU"):
            continue
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        dev_memory(device, ctypes.byref(free), ctypes.byref(total))
        totals.append(int(total.value))
    return totals
