"""A small reader of GGUF headers: the metadata and the tensor table, never the weights.

Enough to estimate a model's memory before llama.cpp loads it (`worker.llm.memory`):
hyperparameters (layers, heads, key/value lengths, sliding window, vocabulary) and each
tensor's name and size. The file is an operator's, but a header is still parsed with
bounds: strings, arrays and counts are capped, and a truncated or odd file raises
GGUFError with what was wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Bounds: a real header has a few dozen keys and a few thousand tensors; the longest
# strings are chat templates (tens of KB). Arrays longer than KEEP_ARRAY (the token
# list) are skipped, their length kept.
MAX_STRING = 16 << 20
MAX_KEYS = 1 << 16
MAX_TENSORS = 1 << 20
MAX_DIMS = 8
KEEP_ARRAY = 4096

# GGUF value types (gguf.h): fixed-size ones by struct format.
_FIXED = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
_STRING = 8
_ARRAY = 9


class GGUFError(Exception):
    """The file is not a GGUF file this reader understands, or its header is damaged."""


@dataclass(frozen=True)
class SkippedArray:
    """A metadata array too long to keep (the token list): its element type and length."""

    item_type: int
    length: int


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the table: name, shape, ggml type, offset in the data section, bytes."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    """What the header of a GGUF file says."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    file_size: int
    _by_name: dict[str, TensorInfo] = field(default_factory=dict, repr=False, compare=False)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """`<architecture>.<key>` from the metadata (e.g. `block_count`)."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the data section: every tensor, with llama.cpp's alignment padding."""
        return self.file_size - self.data_offset

    def tensor(self, name: str) -> TensorInfo | None:
        return self._by_name.get(name)


class _Reader:
    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle = handle
        self.path = path

    def read(self, size: int) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise GGUFError(f"{self.path}: truncated GGUF header")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("<Q")
        if length > MAX_STRING:
            raise GGUFError(f"{self.path}: a header string of {length} bytes")
        return self.read(length).decode("utf-8", errors="replace")

    def value(self, value_type: int) -> Any:
        if value_type in _FIXED:
            return self.unpack(_FIXED[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type = self.unpack("<I")
            length = self.unpack("<Q")
            if length > KEEP_ARRAY:
                self.skip_array(item_type, length)
                return SkippedArray(item_type, length)
            return [self.value(item_type) for _ in range(length)]
        raise GGUFError(f"{self.path}: unknown GGUF value type {value_type}")

    def skip_array(self, item_type: int, length: int) -> None:
        if item_type in _FIXED:
            self.handle.seek(struct.calcsize(_FIXED[item_type]) * length, 1)
        elif item_type == _STRING:
            for _ in range(length):
                size = self.unpack("<Q")
                if size > MAX_STRING:
                    raise GGUFError(f"{self.path}: a header string of {size} bytes")
                self.handle.seek(size, 1)
        else:  # arrays of arrays: no model keeps a long one
            raise GGUFError(f"{self.path}: a long array of type {item_type}")


def read_header(path: Path) -> GGUFHeader:
    """Parse the header of the GGUF file at `path` (versions 2 and 3).

    Raises GGUFError for anything that is not a readable GGUF header, OSError if the
    file cannot be opened.
    """
    with path.open("rb") as handle:
        reader = _Reader(handle, path)
        if reader.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{path} is not a GGUF file (bad magic bytes)")
        version = reader.unpack("<I")
        if version not in (2, 3):
            raise GGUFError(f"{path}: GGUF version {version} is not supported (2 or 3)")
        n_tensors = reader.unpack("<Q")
        n_keys = reader.unpack("<Q")
        if n_tensors > MAX_TENSORS or n_keys > MAX_KEYS:
            raise GGUFError(f"{path}: {n_tensors} tensors and {n_keys} keys: not a real header")
        metadata: dict[str, Any] = {}
        for _ in range(n_keys):
            key = reader.string()
            metadata[key] = reader.value(reader.unpack("<I"))
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name = reader.string()
            n_dims = reader.unpack("<I")
            if n_dims > MAX_DIMS:
                raise GGUFError(f"{path}: tensor {name} has {n_dims} dimensions")
            shape = tuple(reader.unpack("<Q") for _ in range(n_dims))
            raw.append((name, shape, reader.unpack("<I"), reader.unpack("<Q")))
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
        header_end = handle.tell()
        data_offset = -(-header_end // alignment) * alignment
        file_size = handle.seek(0, 2)
    if data_offset > file_size:
        raise GGUFError(f"{path}: truncated GGUF file (no data section)")
    return _with_sizes(path, version, metadata, raw, data_offset, file_size)


def _with_sizes(
    path: Path,
    version: int,
    metadata: dict[str, Any],
    raw: list[tuple[str, tuple[int, ...], int, int]],
    data_offset: int,
    file_size: int,
) -> GGUFHeader:
    # A tensor's bytes are the distance to the next one by offset (padding included, as
    # llama.cpp maps them): no table of ggml type sizes to keep up to date.
    data_size = file_size - data_offset
    ordered = sorted(range(len(raw)), key=lambda i: raw[i][3])
    sizes = [0] * len(raw)
    for rank, index in enumerate(ordered):
        end = raw[ordered[rank + 1]][3] if rank + 1 < len(ordered) else data_size
        size = end - raw[index][3]
        if size < 0 or raw[index][3] > data_size:
            raise GGUFError(f"{path}: tensor {raw[index][0]} lies outside the file")
        sizes[index] = size
    tensors = tuple(
        TensorInfo(name, shape, ggml_type, offset, sizes[i])
        for i, (name, shape, ggml_type, offset) in enumerate(raw)
    )
    return GGUFHeader(
        path=path,
        version=version,
        metadata=metadata,
        tensors=tensors,
        data_offset=data_offset,
        file_size=file_size,
        _by_name={t.name: t for t in tensors},
    )
