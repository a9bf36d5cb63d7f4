"""Settings: environment over TOML, and errors that name the setting and what it accepts."""

from __future__ import annotations

from pathlib import Path

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
