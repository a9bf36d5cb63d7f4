"""The repack probe's answer is remembered beside the model, keyed by the file and the
CPU features: a restart does not load the model twice again; a changed file does."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from worker.llm import repack_probe
from worker.llm.repack_probe import ProbeResult, remembered_probe, verdict


def test_the_answer_is_remembered_until_the_model_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF one")
    probes: list[Path] = []

    def probe(path: Path, n_threads: int | None = None) -> ProbeResult:
        probes.append(path)
        return verdict(-signal.SIGSEGV, "")

    monkeypatch.setattr(repack_probe, "probe_repack", probe)
    assert not remembered_probe(model).repack
    again = remembered_probe(model)
    assert (again.repack, probes) == (False, [model])
    assert again.reason.endswith("(remembered)")
    model.write_bytes(b"GGUF two, longer")  # another file: probed again
    os.utime(model, ns=(1, 1))
    remembered_probe(model)
    assert probes == [model, model]


@pytest.mark.parametrize(
    ("returncode", "kept"),
    [
        (0, True),  # decoded: repacked weights work here
        (-signal.SIGILL, True),  # the CPU does not run them (AMX on some VMs)
        (-signal.SIGSEGV, True),
        (-signal.SIGBUS, True),
        (None, False),  # a timeout: maybe a loaded machine
        (-signal.SIGKILL, False),  # the OOM killer, an operator
        (-signal.SIGTERM, False),
        (1, False),  # an error exit
    ],
)
def test_only_a_clean_answer_is_remembered_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, returncode: int | None, kept: bool
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    probes: list[Path] = []

    def probe(path: Path, n_threads: int | None = None) -> ProbeResult:
        probes.append(path)
        return verdict(returncode, "SystemExit: no")

    monkeypatch.setattr(repack_probe, "probe_repack", probe)
    first = remembered_probe(model)
    assert first.repack is (returncode == 0)
    assert (tmp_path / ".m.gguf.repack-probe.json").exists() is kept
    remembered_probe(model)  # the next start
    assert len(probes) == (1 if kept else 2)


def test_an_answer_written_without_the_clean_mark_is_probed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An earlier version kept every answer, a timeout too.
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    cache = tmp_path / ".m.gguf.repack-probe.json"
    key = repack_probe._probe_key(model)
    cache.write_text(json.dumps({"key": key, "repack": False, "reason": "did not finish"}))
    monkeypatch.setattr(repack_probe, "probe_repack", lambda *_: verdict(0, ""))
    assert remembered_probe(model).repack
    assert json.loads(cache.read_text())["clean"] is True
