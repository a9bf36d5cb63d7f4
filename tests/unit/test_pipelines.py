"""Pipeline files: validated at start-up with errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import REPO_ROOT
from worker.pipelines import PipelineError, load_pipeline, load_pipelines


def test_shipped_pipelines_load() -> None:
    pipelines = load_pipelines(REPO_ROOT / "pipelines")
    assert "summarize" in pipelines
    assert pipelines["summarize"].output_format == "markdown"


def test_invalid_field_is_reported_with_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('prompt = "{{ input }}"\n[generation]\nmax_tokens = 0\ntemperatur = 1\n')
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert f"{path}: field generation.max_tokens" in message
    assert f"{path}: field generation.temperatur" in message


def test_template_that_does_not_compile_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('prompt = "{{ input "\n')
    with pytest.raises(PipelineError, match="field prompt: .*does not compile"):
        load_pipeline(path)


def test_input_is_data_never_a_template(tmp_path: Path) -> None:
    path = tmp_path / "echo.toml"
    path.write_text('prompt = "Text: {{ input }}"\n')
    pipeline = load_pipeline(path)
    hostile = "{{ 7 * 7 }} {% for x in range(3) %}x{% endfor %} {{ ''.__class__ }}"
    assert pipeline.render(hostile) == f"Text: {hostile}"


def test_sandbox_blocks_unsafe_attribute_access_in_templates(tmp_path: Path) -> None:
    path = tmp_path / "evil.toml"
    path.write_text('prompt = "{{ input.__class__.__mro__ }}"\n')
    pipeline = load_pipeline(path)
    with pytest.raises(Exception, match="unsafe|undefined"):
        pipeline.render("x")
