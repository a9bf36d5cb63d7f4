"""Schedule fields of pipeline files: validated at start-up, errors naming file and field."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.pipelines.spec import PipelineError, load_pipeline

PROMPT = 'prompt = "Q: {{ input }}"\n'


def write(tmp_path: Path, body: str, name: str = "nightly") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(PROMPT + body)
    return path


def test_a_scheduled_pipeline_loads(tmp_path: Path) -> None:
    pipeline = load_pipeline(
        write(
            tmp_path,
            (
                'schedule = "0 2 * * *"\ntimezone = "Europe/Berlin"\nsweep = ["reports/*.txt"]\n'
                'inbox_mode = "scheduled"\nwindow = "22:00-06:00"\nmisfire_grace = 600\n'
            ),
        )
    )
    assert pipeline.schedule == "0 2 * * *"
    assert pipeline.sweep == ("reports/*.txt",)
    assert pipeline.misfire_grace == 600
    assert pipeline.open_at(datetime(2026, 1, 15, 22, 0, tzinfo=UTC))  # 23:00 in Berlin
    assert not pipeline.open_at(datetime(2026, 1, 15, 12, 0, tzinfo=UTC))


def test_defaults_are_unscheduled_and_always_open(tmp_path: Path) -> None:
    pipeline = load_pipeline(write(tmp_path, ""))
    assert (pipeline.schedule, pipeline.timezone, pipeline.inbox_mode) == (
        None,
        "UTC",
        "continuous",
    )
    assert pipeline.misfire_grace == 3600
    assert pipeline.open_at(datetime(2026, 1, 15, 12, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ('schedule = "* * *"\nsweep = ["x"]\n', "schedule", "has 3 fields"),
        (
            'schedule = "0 2 * * *"\nsweep = ["x"]\ntimezone = "Mars/Olympus"\n',
            "timezone",
            "unknown time zone 'Mars/Olympus'",
        ),
        ('window = "10pm-6am"\n', "window", "not HH:MM-HH:MM"),
        ('inbox_mode = "nightly"\n', "inbox_mode", "'continuous' or 'scheduled'"),
        (
            'schedule = "0 2 * * *"\nsweep = ["x"]\nmisfire_grace = -1\n',
            "misfire_grace",
            "greater than or equal to 0",
        ),
        ('sweep = ["x"]\n', "sweep", "needs a schedule"),
        ('inbox_mode = "scheduled"\n', "inbox_mode", "needs a schedule"),
        ('schedule = "0 2 * * *"\n', "schedule", "nothing to do at a fire"),
        ('schedule = "0 2 * * *"\nsweep = [""]\n', "sweep", "empty glob"),
    ],
)
def test_bad_schedule_fields_name_file_and_field(
    tmp_path: Path, body: str, field: str, message: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(PipelineError) as info:
        load_pipeline(path)
    text = str(info.value)
    assert f"{path}: field {field}" in text
    assert message in text


def test_sweep_glob_matching_agrees_with_glob(tmp_path: Path) -> None:
    from worker.sources.sweep import glob_pattern, matching_files

    for name in ("a.txt", "b.md", "sub/c.txt", "sub/deep/d.txt", "x[1].txt", "sub/.e.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    for pattern in ("*.txt", "**/*.txt", "sub/*.txt", "sub/**/*.txt", "[ab].*", "?.md", "x*"):
        found = set(matching_files([pattern], tmp_path))
        regex = glob_pattern(str(tmp_path.resolve() / pattern))
        matched = {p for p in files if regex.match(str(p))}
        # glob skips dot-files; the sweeper ignores them anyway
        assert {p for p in matched if not p.name.startswith(".")} == found, pattern
