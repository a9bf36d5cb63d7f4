"""The repack probe's answer is remembered beside the model, keyed by the file and the
CPU features: a restart does not load the model twice again; a changed file does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.llm import repack_probe
from worker.llm.repack_probe import ProbeResult, remembered_probe


def test_the_answer_is_remembered_until_the_model_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF one")
    probes: list[Path] = []

    def probe(path: Path, n_threads: int | None = None) -> ProbeResult:
        probes.append(path)
        return ProbeResult(False, "the probe died with SIGSEGV using repacked weights")

    monkeypatch.setattr(repack_probe, "probe_repack", probe)
    assert not remembered_probe(model).repack
    again = remembered_probe(model)
    assert (again.repack, probes) == (False, [model])
    assert again.reason.endswith("(remembered)")
    model.write_bytes(b"GGUF two, longer")  # another file: probed again
    os.utime(model, ns=(1, 1))
    remembered_probe(model)
    assert probes == [model, model]
