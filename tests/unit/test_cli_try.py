"""`edge-worker pipelines try` answers as the daemon would, and closes its engine."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.fakes import FakeEngine
from worker.cli.pipelines import _try
from worker.config import Settings
from worker.pipelines.spec import Pipeline

BATCH = Pipeline(name="batch", reader="openai-batch")


class ClosingEngine(FakeEngine):
    closed = False

    def close(self) -> None:
        self.closed = True


def batch_file(tmp_path: Path, url: str, body: Mapping[str, object]) -> Path:
    line = {"custom_id": "a", "method": "POST", "url": url, "body": body}
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(line) + "\n")
    return path


def test_a_completions_line_is_not_stripped_and_the_engine_is_closed(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = ClosingEngine(lambda prompt: " continued text\n")
    body: dict[str, object] = {"model": settings.model, "prompt": "Once", "max_tokens": 5}
    _try(settings, BATCH, batch_file(tmp_path, "/v1/completions", body), lambda _s: engine)
    assert capsys.readouterr().out == " continued text\n\n"  # print() adds the last newline
    assert engine.closed


def test_a_chat_line_is_stripped_and_the_engine_closed_even_on_error(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = ClosingEngine(lambda prompt: "  hello  ")
    body = {"model": settings.model, "messages": [{"role": "user", "content": "hi"}]}
    _try(settings, BATCH, batch_file(tmp_path, "/v1/chat/completions", body), lambda _s: engine)
    assert capsys.readouterr().out == "hello\n"
    assert engine.closed

    failing = ClosingEngine(fail=RuntimeError("boom"))
    chat = batch_file(tmp_path, "/v1/chat/completions", body)
    with pytest.raises(RuntimeError):
        _try(settings, BATCH, chat, lambda _s: failing)
    assert failing.closed
