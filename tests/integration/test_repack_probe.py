"""The start-up probe for repacked weights, with the real model: its answer holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from worker.llm.repack_probe import probe_repack

pytestmark = pytest.mark.timeout(300)

# What the probe promises: an engine with repacked weights on decodes (in a child, since
# a machine where they fault would kill this process).
ENGINE_WITH_REPACK = """
import sys
from pathlib import Path
from worker.llm.batched import BatchedEngine, BatchOptions
from worker.llm.engine import EngineOptions
from worker.llm.generation import Generation
from worker.llm.model_files import ModelFile

engine = BatchedEngine(ModelFile("gemma", Path(sys.argv[1]), None),
                       EngineOptions(n_ctx=256, n_threads=2),
                       BatchOptions(parallel=2, repack_weights=True))
out = engine.complete("The capital of France is", Generation(max_tokens=4), lambda: False)
engine.close()
print("decoded", out.completion_tokens)
"""


def test_the_probe_answer_holds_for_the_engine(gguf: Path) -> None:
    result = probe_repack(gguf)
    done = subprocess.run(
        [sys.executable, "-c", ENGINE_WITH_REPACK, str(gguf)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    print(f"probe: {result}; the engine with repacked weights exited {done.returncode}")
    if result.repack:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "decoded" in done.stdout
    else:
        assert result.reason  # says why: a signal, an exit code or a timeout
        assert done.returncode != 0, "the probe said no, but the engine ran with them"
