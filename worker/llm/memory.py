"""How much memory a model takes, before it is loaded, and how much the daemon may use.

The estimate follows what llama.cpp allocates for a context (its own arithmetic, in
`llama_context` and `llama_kv_cache`), given the cparams the engine sets:

- weights: the GGUF's data section (llama.cpp maps it as one buffer, padding included);
- KV cache: per layer, key and value rows of `n_head_kv x key_length` (and value_length)
  f16 elements, for `n_ctx_seq` cells in each of `n_streams` streams. llama.cpp rounds
  the context up to 256 cells. Sliding-window layers get `n_swa (+ n_ubatch)` cells,
  rounded up to 256, unless the engine asks for full-size windows (`swa_full`, which
  the generation engine does: its shared-prefix copies need them), then as many as
  the other layers;
- output buffer: `n_vocab` logits for each sequence (at least), f32;
- compute buffer: the worst-case graph llama.cpp reserves, which on a large vocabulary
  is its logits for `min(n_ubatch, n_outputs_max)` rows; otherwise the activations of
  one ubatch.

The pure arithmetic is here with the budget's parsing; reading /proc and cgroups is at
the bottom, in small functions.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.llm.gguf import GGUFHeader, SkippedArray

MiB = 1 << 20
GiB = 1 << 30
CTX_PAD = 256  # llama.cpp pads the context (and each stream) to this many cells
F32 = 4
# A share of the limit the daemon itself keeps for Python, its buffers and parsers.
DAEMON_RESERVE = 256 * MiB
# The sliding-window pattern each architecture uses when its GGUF does not declare one:
# (every n-th layer is full-attention, dense first). From llama.cpp's model loaders.
SWA_PATTERNS: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma-embedding": (6, False),
    "gemma3n": (5, False),
    "cohere2": (4, False),
    "llama4": (4, False),
    "gpt-oss": (2, False),
    "exaone4": (4, False),
    "olmo2": (4, False),
    "afmoe": (4, False),
    "plamo3": (8, False),
    "smallthinker": (4, True),
    "modern-bert": (3, True),
}
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 1000,
    "m": MiB,
    "mib": MiB,
    "mb": 1000**2,
    "g": GiB,
    "gib": GiB,
    "gb": 1000**3,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class BudgetError(ValueError):
    """A memory budget that is neither a byte count nor a share such as "70%"."""


# A GPU budget that is not known (no GPU memory could be read): never the limit.
UNKNOWN_GPU_MEMORY = 1 << 62


def gpu_figure(value: int) -> int | None:
    """A GPU budget for people and scripts: None where it is not known."""
    return None if value >= UNKNOWN_GPU_MEMORY else value


@dataclass(frozen=True)
class Budget:
    """`memory_budget` as configured: a share of the memory there is, or bytes."""

    share: float | None = None
    bytes: int | None = None

    def resolve(self, limit: int) -> int:
        """Bytes models may take on a host (or device) with `limit` bytes for this daemon.

        A share is of the limit; a byte count is capped at the limit less what the
        daemon keeps for itself.
        """
        if self.share is not None:
            return int(limit * self.share)
        assert self.bytes is not None
        return max(0, min(self.bytes, limit - DAEMON_RESERVE))

    def describe(self) -> str:
        return f"{self.share * 100:g}%" if self.share is not None else human(self.bytes or 0)


def parse_size(text: str) -> int:
    """Bytes in "512MiB", "8G" (binary, as systemd's MemoryMax), "1.5GB" (decimal), "1000"."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise BudgetError(f"{text!r} is not a size (e.g. 8GiB, 512M, 1.5GB, or bytes)")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_budget(value: str | int) -> Budget:
    """A budget from the setting: bytes (an int, or "8GiB"), or a share of memory ("70%")."""
    if isinstance(value, int):
        if value <= 0:
            raise BudgetError("must be more than 0 bytes")
        return Budget(bytes=value)
    text = value.strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            raise BudgetError(f"{value!r} is not a share such as 70%") from None
        if not 0 < share <= 1:
            raise BudgetError(f"{value!r}: a share must be more than 0% and at most 100%")
        return Budget(share=share)
    size = parse_size(text)
    if size <= 0:
        raise BudgetError("must be more than 0 bytes")
    return Budget(bytes=size)


def human(size: int | float) -> str:
    """`235.2 MiB`, `1.50 GiB`: sizes for messages."""
    if abs(size) >= GiB:
        return f"{size / GiB:.2f} GiB"
    return f"{size / MiB:.1f} MiB"


@dataclass(frozen=True)
class Memory:
    """Bytes on the host and on GPUs."""

    host: int = 0
    gpu: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.host + other.host, self.gpu + other.gpu)

    def __sub__(self, other: Memory) -> Memory:
        return Memory(self.host - other.host, self.gpu - other.gpu)

    def fits(self, budget: Memory) -> bool:
        return self.host <= budget.host and self.gpu <= budget.gpu

    def larger(self, other: Memory) -> Memory:
        return Memory(max(self.host, other.host), max(self.gpu, other.gpu))

    def describe(self) -> str:
        return human(self.host) + (f" + {human(self.gpu)} on GPUs" if self.gpu else "")


@dataclass(frozen=True)
class EngineShape:
    """The cparams of an engine that decide its memory (what the engine will pass)."""

    n_ctx: int  # cells per sequence, as the settings mean it
    n_seq: int  # sequences llama.cpp is told of (n_seq_max): slots and cache sequences
    n_ubatch: int
    n_batch: int
    unified: bool = False  # one KV stream for all sequences, or one each
    swa_full: bool = True
    n_outputs_max: int = 0  # logits rows one decode may ask for (0: n_batch)
    logits: bool = True  # False for an embedding context (pooled vectors, no logits)
    kv_element_bytes: int = 2  # f16 keys and values
    n_gpu_layers: int = 0


@dataclass(frozen=True)
class KVLayout:
    """The KV cache's arithmetic, for the message."""

    layers: int
    swa_layers: int
    cells: int  # per stream
    swa_cells: int  # per stream, in sliding-window layers
    streams: int
    bytes_per_cell: int  # keys and values of one cell in one layer


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model will take once loaded, by part; `gpu` of them on GPUs."""

    weights: int
    kv: int
    outputs: int
    compute: int
    layout: KVLayout
    gpu: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.outputs + self.compute

    @property
    def host(self) -> int:
        return self.total - self.gpu

    def describe(self) -> str:
        """The arithmetic, for logs and for the message of a model that cannot fit."""
        k = self.layout
        swa = ""
        if k.swa_layers and k.swa_cells == k.cells:
            swa = f", {k.swa_layers} of them sliding-window, kept whole (swa_full)"
        elif k.swa_layers:
            swa = f", {k.swa_layers} of them sliding-window at {k.swa_cells} cells"
        return (
            f"weights {human(self.weights)} + KV cache {human(self.kv)} ({k.layers} layers x "
            f"{k.cells} cells x {k.streams} sequences x {k.bytes_per_cell} bytes{swa}) + "
            f"compute {human(self.compute)} + outputs {human(self.outputs)} = "
            f"{human(self.total)}" + (f" ({human(self.gpu)} of it on GPUs)" if self.gpu else "")
        )


def _pad(value: int, to: int = CTX_PAD) -> int:
    return -(-value // to) * to


def _per_layer(value: Any, layers: int, default: int) -> list[int]:
    """A hyperparameter that may be one number or one per layer."""
    if isinstance(value, list) and value:
        return [int(v) for v in value][:layers] + [int(value[-1])] * max(0, layers - len(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [int(value)] * layers
    return [default] * layers


def swa_layers(header: GGUFHeader, layers: int) -> list[bool]:
    """Which layers use a sliding window (llama.cpp's rule: the GGUF's pattern, else the
    architecture's)."""
    if not header.arch_value("attention.sliding_window"):
        return [False] * layers
    declared = header.arch_value("attention.sliding_window_pattern")
    if isinstance(declared, list):
        return [bool(v) for v in declared][:layers] + [False] * max(0, layers - len(declared))
    pattern, dense_first = SWA_PATTERNS.get(header.architecture, (0, False))
    if isinstance(declared, int) and not isinstance(declared, bool):
        pattern = declared
    if pattern == 0 and header.architecture not in SWA_PATTERNS:
        return [False] * layers  # unknown architecture: counted as full (the larger figure)
    if dense_first:
        return [pattern == 0 or i % pattern != 0 for i in range(layers)]
    return [pattern == 0 or i % pattern < pattern - 1 for i in range(layers)]


def _vocab_size(header: GGUFHeader) -> int:
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, SkippedArray):
        return tokens.length
    if isinstance(tokens, list):
        return len(tokens)
    return int(header.arch_value("vocab_size", 32_000))


def estimate(header: GGUFHeader, shape: EngineShape) -> MemoryEstimate:
    """What llama.cpp will allocate for this model and engine shape (see the module doc)."""
    layers = int(header.arch_value("block_count", 0))
    n_embd = int(header.arch_value("embedding_length", 0))
    heads = _per_layer(header.arch_value("attention.head_count"), layers, 1)
    heads_kv = _per_layer(header.arch_value("attention.head_count_kv"), layers, heads[0])
    head_k = int(header.arch_value("attention.key_length", n_embd // max(heads[0], 1)))
    head_v = int(header.arch_value("attention.value_length", head_k))
    n_ff = max(_per_layer(header.arch_value("feed_forward_length"), layers, 4 * n_embd) or [0])
    window = int(header.arch_value("attention.sliding_window", 0) or 0)
    swa = swa_layers(header, layers)

    # llama_context: the whole context padded, then each stream's share padded.
    streams = 1 if shape.unified else shape.n_seq
    total_ctx = _pad(shape.n_ctx * (1 if shape.unified else shape.n_seq))
    cells = total_ctx if shape.unified else _pad(total_ctx // shape.n_seq)
    swa_cells = cells
    if not shape.swa_full and window:
        swa_cells = _pad(
            min(cells, window * (shape.n_seq if shape.unified else 1) + shape.n_ubatch)
        )
    kv = 0
    for i in range(layers):
        per_cell = heads_kv[i] * (head_k + head_v) * shape.kv_element_bytes
        kv += per_cell * (swa_cells if swa[i] else cells) * streams
    bytes_per_cell = heads_kv[0] * (head_k + head_v) * shape.kv_element_bytes

    vocab = _vocab_size(header)
    n_batch = min(shape.n_batch, total_ctx)  # causal attention: a batch fits the context
    n_ubatch = min(shape.n_ubatch, n_batch)
    outputs_max = shape.n_outputs_max or n_batch
    if shape.logits:
        outputs = vocab * max(shape.n_seq, 1) * F32
        logit_rows = min(n_ubatch, outputs_max)
        head = logit_rows * (vocab + 2 * n_embd) * F32
    else:
        outputs = n_embd * max(shape.n_seq, 1) * F32
        head = n_ubatch * n_embd * 2 * F32
    # One layer's activations for a ubatch: the residual stream, q/k/v, the two
    # feed-forward projections, and the attention mask over the cells a stream sees.
    activations = (
        n_ubatch * F32 * (3 * n_embd + heads[0] * head_k + 2 * heads_kv[0] * head_k + 2 * n_ff)
        + n_ubatch * cells * 2
    )
    compute = max(head, activations)

    gpu = 0
    if shape.n_gpu_layers:
        offloaded = layers if shape.n_gpu_layers < 0 else min(shape.n_gpu_layers, layers)
        share = offloaded / layers if layers else 1.0
        block = sum(t.nbytes for t in header.tensors if t.name.startswith("blk."))
        gpu = math.ceil(block * share + kv * share + compute)
    return MemoryEstimate(
        weights=header.weight_bytes,
        kv=kv,
        outputs=outputs,
        compute=compute,
        layout=KVLayout(layers, sum(swa), cells, swa_cells, streams, bytes_per_cell),
        gpu=gpu,
    )


# Reading the host ---------------------------------------------------------------


def parse_meminfo(text: str) -> int | None:
    """MemTotal in bytes from /proc/meminfo's text."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def parse_cgroup_limit(text: str) -> int | None:
    """A cgroup memory limit file's value (v2 `memory.max`, v1 `limit_in_bytes`); None if
    unlimited ("max", or v1's huge page-rounded number)."""
    value = text.strip()
    if not value or value == "max":
        return None
    number = int(value)
    return None if number >= 1 << 60 else number


def cgroup_limit_paths(proc_cgroup: str, root: Path = Path("/sys/fs/cgroup")) -> list[Path]:
    """The limit files of this process's memory cgroup and its ancestors (v2 and v1),
    as /proc/self/cgroup names them, plus the mount's root (a container sees its own
    cgroup there)."""
    paths: list[Path] = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _id, controllers, where = parts
        if controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        current = Path(where)
        while True:
            paths.append(base / current.relative_to("/") / name)
            if current == current.parent:
                break
            current = current.parent
    return paths


def host_memory_limit() -> int:
    """The memory this process may use: RAM, or less under a cgroup limit (systemd's
    MemoryMax=, a container's limit)."""
    try:
        total = parse_meminfo(Path("/proc/meminfo").read_text())
    except OSError:
        total = None
    if total is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limits = [total]
    try:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        proc_cgroup = ""
    for path in cgroup_limit_paths(proc_cgroup):
        try:
            limit = parse_cgroup_limit(path.read_text())
        except (OSError, ValueError):
            continue
        if limit is not None:
            limits.append(limit)
    return min(limits)


def process_rss() -> int:
    """This process's resident memory in bytes (0 where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
