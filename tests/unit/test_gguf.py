"""The GGUF header reader: the real model's header, and small files written here (bounds,
damage, versions)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import model_path
from worker.llm.gguf import GGUFError, SkippedArray, read_header


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value: Any) -> bytes:
    if isinstance(value, bool):
        return struct.pack("<I", 7) + struct.pack("<?", value)
    if isinstance(value, int):
        return struct.pack("<I", 4) + struct.pack("<I", value)
    if isinstance(value, float):
        return struct.pack("<I", 6) + struct.pack("<f", value)
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, list):
        items = b"".join(struct.pack("<i", v) for v in value)
        return struct.pack("<I", 9) + struct.pack("<IQ", 5, len(value)) + items
    raise TypeError(value)


def write_gguf(
    path: Path,
    metadata: dict[str, Any],
    tensors: list[tuple[str, tuple[int, ...], int]],
    data_size: int,
    version: int = 3,
) -> Path:
    """A GGUF file: `tensors` are (name, shape, offset), then `data_size` bytes of data."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, value in metadata.items():
        head += _string(key) + _value(value)
    for name, shape, offset in tensors:
        head += _string(name) + struct.pack("<I", len(shape))
        head += b"".join(struct.pack("<Q", d) for d in shape) + struct.pack("<IQ", 0, offset)
    head += b"\0" * (-len(head) % 32)
    path.write_bytes(head + b"\1" * data_size)
    return path


def test_the_real_models_header() -> None:
    header = read_header(model_path())
    assert header.version == 3
    assert header.architecture == "gemma3"
    assert header.arch_value("block_count") == 18
    assert header.arch_value("attention.head_count_kv") == 1
    assert header.arch_value("attention.key_length") == 256
    assert header.arch_value("attention.sliding_window") == 512
    assert header.metadata["tokenizer.ggml.tokens"] == SkippedArray(8, 262_144)
    assert len(header.tensors) == 236
    # What llama.cpp reports as "CPU_Mapped model buffer size = 235.16 MiB".
    assert header.weight_bytes == 246_587_904
    assert sum(t.nbytes for t in header.tensors) == header.weight_bytes
    embeddings = header.tensor("token_embd.weight")
    assert embeddings is not None and embeddings.shape == (640, 262_144)


def test_a_small_file_with_every_kind_of_value(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        {
            "general.architecture": "llama",
            "llama.block_count": 2,
            "llama.rope.freq_base": 10000.0,
            "llama.flag": True,
            "llama.attention.head_count_kv": [4, 2],
        },
        [("blk.0.w", (4, 4), 0), ("blk.1.w", (4, 4), 64)],
        data_size=160,
    )
    header = read_header(path)
    assert header.arch_value("block_count") == 2
    assert header.arch_value("flag") is True
    assert header.arch_value("attention.head_count_kv") == [4, 2]
    assert [t.nbytes for t in header.tensors] == [64, 96]  # to the next offset, to the end
    assert header.weight_bytes == 160


def test_damaged_and_foreign_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    good = write_gguf(tmp_path / "g.gguf", {"general.architecture": "llama"}, [], 0)
    data = good.read_bytes()
    cases = {
        "not a GGUF file": b"GGML" + data[4:],
        "truncated GGUF header": data[:30],
        "GGUF version 1 is not supported": data[:4] + struct.pack("<I", 1) + data[8:],
    }
    for message, content in cases.items():
        path = tmp_path / "bad.gguf"
        path.write_bytes(content)
        with pytest.raises(GGUFError, match=message):
            read_header(path)
    huge = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40)
    (tmp_path / "huge.gguf").write_bytes(huge)
    with pytest.raises(GGUFError, match="a header string of"):
        read_header(tmp_path / "huge.gguf")
    outside = write_gguf(tmp_path / "o.gguf", {}, [("t", (4,), 4096)], data_size=16)
    with pytest.raises(GGUFError, match="outside the file"):
        read_header(outside)
