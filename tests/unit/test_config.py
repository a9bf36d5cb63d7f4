"""Settings: environment over TOML, and errors that name the setting and what it accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker.config import ConfigError, load_settings


def test_environment_overrides_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('n_ctx = 1024\nlog_format = "json"\n[models.other]\npath = "/m/o.gguf"\n')
    monkeypatch.setenv("EDGE_WORKER_N_CTX", "4096")
    settings = load_settings(config)
    assert settings.n_ctx == 4096
    assert settings.log_format == "json"
    assert settings.models["other"].path == Path("/m/o.gguf")


def test_bad_value_names_the_setting_and_the_accepted_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EDGE_WORKER_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "EDGE_WORKER_LOG_FORMAT" in message
    assert "'auto', 'json' or 'text'" in message
    assert "'xml'" in message


def test_more_slots_than_a_decode_call_holds_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_WORKER_PARALLEL", "64")
    monkeypatch.setenv("EDGE_WORKER_N_BATCH", "32")
    with pytest.raises(ConfigError, match=r"EDGE_WORKER_N_BATCH.*at least parallel \(64\)"):
        load_settings()
    monkeypatch.setenv("EDGE_WORKER_N_BATCH", "64")
    assert load_settings().n_batch == 64


def test_unknown_setting_in_toml_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("n_ctxx = 1024\n")
    with pytest.raises(ConfigError, match="n_ctxx"):
        load_settings(config)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_sqlite_default_lives_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve()}/jobs.db"
    assert settings.folder("inbox", "summarize") == tmp_path / "inbox" / "summarize"


PG = "postgresql+psycopg://edge@db/jobs"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stall_seconds": 2, "poll_interval": 2}, r"stall_seconds \(2\) .* poll_interval \(2\)"),
        ({"stall_seconds": 10}, r"stall_seconds \(10\) .* SQLite's busy timeout \(10 s\)"),
        (
            {"database_url": PG, "db_statement_timeout": 0},
            r"db_statement_timeout must be positive .* stall_seconds \(120\)",
        ),
        (
            {"database_url": PG, "stall_seconds": 70},
            r"db_connect_timeout \(10\) \+ db_statement_timeout \(60\) .* stall_seconds \(70\)",
        ),
        (  # a pool wait, then the check of a dead connection: each up to connect
            {"database_url": PG, "stall_seconds": 15, "db_statement_timeout": 3},
            r"twice db_connect_timeout \(10\) .* stall_seconds \(15\)",
        ),
    ],
)
def test_a_wait_the_settings_allow_must_end_before_the_watchdog_calls_it_a_stall(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**overrides)


def test_waits_that_end_before_stall_seconds_are_accepted() -> None:
    assert load_settings(stall_seconds=11, poll_interval=2).stall_seconds == 11
    fitting = load_settings(
        database_url=PG,
        stall_seconds=20,
        db_connect_timeout=3,
        db_statement_timeout=10,
        db_lock_timeout=0,  # lock waits count toward statement_timeout: still bounded
    )
    assert fitting.db_lock_timeout == 0
