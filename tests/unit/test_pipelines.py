"""Pipeline files: validated at start-up with errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import SHIPPED_PIPELINES_DIR
from worker.pipelines.spec import PipelineError, load_pipeline, load_pipelines


def test_shipped_pipelines_load() -> None:
    pipelines = load_pipelines(SHIPPED_PIPELINES_DIR)
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


def test_shipped_pipelines_cover_the_issue() -> None:
    pipelines = load_pipelines(SHIPPED_PIPELINES_DIR)
    assert {"summarize", "summarize-long", "extract", "classify", "batch"} <= set(pipelines)
    extract = pipelines["extract"]
    assert extract.json_schema is not None
    assert extract.json_schema["required"] == ["people", "organisations", "dates", "amounts"]
    classify = pipelines["classify"].json_schema
    assert classify is not None and "enum" in classify["properties"]["label"]
    assert pipelines["summarize-long"].long_input == "chunk"
    assert pipelines["batch"].reader == "openai-batch"


def test_json_schema_from_a_file_relative_to_the_pipeline(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "s.json").write_text('{"type": "object", "required": ["a"]}')
    path = tmp_path / "p.toml"
    path.write_text(
        'prompt = "{{ input }}"\noutput_format = "json"\njson_schema = "schemas/s.json"\n'
    )
    assert load_pipeline(path).json_schema == {"type": "object", "required": ["a"]}
    path.write_text('prompt = "{{ input }}"\noutput_format = "json"\njson_schema = "nope.json"\n')
    with pytest.raises(PipelineError, match="field json_schema: cannot read"):
        load_pipeline(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('output_format = "json"\n[json_schema]\ntype = 5\n', "invalid JSON Schema"),
        ("[json_schema]\ntype = 'object'\n", 'json_schema needs output_format = "json"'),
        ('output_format = "json"\nanswer_prefix = "-"\n', "answer_prefix cannot be used"),
        ('system_prompt = "Be nice."\n', 'system_prompt needs mode = "chat"'),
        ('long_input = "chunk"\n', "needs a reduce_prompt"),
        ('long_input = "chunk"\nreduce_prompt = "no input here"\n', "never uses {{ input }}"),
        ("[generation]\nspecial = true\n", "set by edge-worker"),
        ('reader = "docx"\n', "field reader"),
        ('mode = "instruct"\n', "field mode"),
    ],
)
def test_inconsistent_pipelines_are_refused(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text('prompt = "{{ input }}"\n' + body)
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_pipeline_models_must_be_in_the_table_and_the_daemon_serves_all_of_them(
    tmp_path: Path,
) -> None:
    from worker.config import load_settings
    from worker.pipelines.models import resolve_model_name, served_models, startup_model_errors
    from worker.pipelines.spec import Pipeline

    settings = load_settings(
        data_dir=tmp_path,
        models={"other": {"path": str(tmp_path / "o.gguf")}},
        model_aliases={"gpt-4o-mini": "gemma-3-270m", "bad": "missing"},
    )
    pipelines = {
        "a": Pipeline(name="a"),
        "b": Pipeline(name="b", model="gpt-4o-mini"),
        "c": Pipeline(name="c", model="other"),
        "d": Pipeline(name="d", model="nope"),
    }
    errors = startup_model_errors(pipelines, settings)
    assert errors[0] == "model_aliases.bad: 'missing' is not in the model table"
    assert errors[1].startswith("pipeline d: field model: model 'nope' is not in the model table")
    assert len(errors) == 2
    assert resolve_model_name(settings, "gpt-4o-mini") == "gemma-3-270m"
    # One daemon serves every model its pipelines name, the `model` setting's first.
    del pipelines["d"]
    assert served_models(pipelines, settings) == ["gemma-3-270m", "other"]
