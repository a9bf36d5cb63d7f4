"""Settings: environment (`EDGE_WORKER_*`, nested with `__`) over an optional TOML file.

This is the only module that reads the environment.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "EDGE_WORKER_"
DEFAULT_MODEL_NAME = "gemma-3-270m"
# The shipped pipelines are package data (a symlink `pipelines/` points here from a checkout).
SHIPPED_PIPELINES_DIR = Path(str(files("worker.pipelines") / "shipped"))


class ConfigError(Exception):
    """A setting is invalid; the message names the setting and what it accepts."""


class ModelSpec(BaseModel):
    """One entry of the model table: a GGUF file and, optionally, its expected sha256."""

    model_config = {"extra": "forbid"}

    path: Path | None = Field(
        default=None, description="GGUF file; unset only for the built-in default model"
    )
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template for chat mode; default: the GGUF's own, else a plain "
        "transcript (User:/Assistant:) that base models continue",
    )


class Settings(BaseSettings):
    """Everything the daemon and the CLI can be told. See README, 'Configuration'."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(default=Path("var"), description="jobs.db, models/, the folders")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite")
    pipelines_dir: Path = Field(default=SHIPPED_PIPELINES_DIR)
    models_dir: Path | None = Field(default=None, description="default: <data_dir>/models")

    model: str = Field(default=DEFAULT_MODEL_NAME, description="model used by pipelines")
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    # Names that batch requests may use for a model in the table, e.g. gpt-4o-mini.
    model_aliases: dict[str, str] = Field(default_factory=dict)

    n_ctx: int = Field(default=2048, ge=64, le=1_048_576)
    n_threads: int | None = Field(default=None, ge=1, le=1024)
    n_gpu_layers: int = Field(default=0, ge=-1)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    parallel: int = Field(default=8, ge=1, le=256, description="sequences decoded at once")
    n_batch: int = Field(default=512, ge=16, description="tokens per llama_decode call")
    n_ubatch: int = Field(default=512, ge=16, description="physical batch size")
    n_threads_batch: int | None = Field(default=None, ge=1, le=1024)
    # A job's greedy output does not depend on what else is in the batch (see README,
    # Performance); off trades that for faster prompt processing on CPUs.
    batch_invariant: bool = False
    # Repacked weight layouts and AMX tiles (llama.cpp's extra buffer types); ignored while
    # batch_invariant is on. None (the default): on unless a probe at start-up (a child
    # process that decodes a few tokens with them) dies; some virtual machines report AMX
    # and fault on it (SIGILL).
    repack_weights: bool | None = None

    lease_seconds: float = Field(default=60.0, gt=1)
    poll_interval: float = Field(default=0.5, gt=0, le=60)
    sweep_interval: float = Field(default=5.0, gt=0)
    settle_seconds: float = Field(default=1.0, ge=0)
    rescan_interval: float = Field(default=10.0, gt=0)
    max_input_bytes: int = Field(
        default=1_000_000, gt=0, description="largest input file, and largest text read from one"
    )
    max_records_per_file: int = Field(
        default=10_000, ge=1, description="records (lines, rows) one file may fan out into"
    )
    # Mode of output and error files; the folders created for them get x wherever r is
    # set (0640 gives 0750). Octal, as a string ("0640") or a TOML octal (0o640).
    output_mode: int = Field(default=0o640, ge=0o600, le=0o777)
    # Mode of the inbox folders the daemon creates: setgid and group-writable, so members
    # of the data folder's group (edge-worker-submit under systemd) can drop files.
    inbox_mode: int = Field(default=0o2770, ge=0o700, le=0o7777)
    max_attempts: int = Field(default=3, ge=1)
    retry_base_seconds: float = Field(default=5.0, ge=0)
    shutdown_timeout: float = Field(default=30.0, ge=0)
    # Wall-clock seconds one attempt at a job may take, map-reduce included (0: no limit).
    job_timeout: float = Field(default=3600.0, ge=0)
    # A job naming a pipeline this daemon does not know waits this long (a pipeline file
    # may be on its way, then `systemctl reload`) before it fails for good.
    unknown_pipeline_grace: float = Field(default=600.0, ge=0)

    metrics_file: Path | None = Field(
        default=None, description="Prometheus text file; default <data_dir>/metrics.prom"
    )
    metrics_interval: float = Field(default=5.0, gt=0, description="seconds between rewrites")
    metrics_port: int | None = Field(default=None, ge=1, le=65535, description="127.0.0.1 only")

    retention_days: int = Field(
        default=30,
        ge=0,
        description="days a finished job (and its done/ and failed/ files) is kept; 0: forever",
    )
    # Test only: this daemon's clock runs this many seconds ahead (negative: behind), to
    # simulate a host without NTP. Leases on PostgreSQL never use it (the database's clock).
    clock_offset_seconds: float = Field(
        default=0.0, ge=-86_400, le=86_400, description="test only: shift this daemon's clock"
    )

    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("n_batch")
    @classmethod
    def _fits_slots(cls, value: int, info: ValidationInfo) -> int:
        # Every running sequence's next token goes into one decode call.
        parallel = info.data.get("parallel")
        if parallel is not None and value < parallel:
            raise ValueError(f"must be at least parallel ({parallel})")
        return value

    @field_validator("output_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return int(value.removeprefix("0o"), 8)
            except ValueError:
                raise ValueError("must be an octal file mode such as 0640") from None
        return value

    @field_validator("output_mode")
    @classmethod
    def _owner_writes(cls, value: int) -> int:
        if value & 0o600 != 0o600:
            raise ValueError("must let the owner read and write (0600 at least)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then environment, then the TOML file.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    # Derived locations -------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        """The database URL in effect: the setting, or SQLite at `<data_dir>/jobs.db`."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'jobs.db').resolve()}"

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    @property
    def resolved_metrics_file(self) -> Path:
        return self.metrics_file or self.data_dir / "metrics.prom"

    def folder(self, kind: Literal["inbox", "outbox", "done", "failed"], pipeline: str) -> Path:
        """`<data_dir>/<kind>/<pipeline>/`."""
        return self.data_dir / kind / pipeline


def systemd_notify_socket() -> tuple[str | None, float | None]:
    """systemd's NOTIFY_SOCKET and the watchdog interval in seconds (WATCHDOG_USEC), if set."""
    usec = os.environ.get("WATCHDOG_USEC")
    return os.environ.get("NOTIFY_SOCKET") or None, int(usec) / 1e6 if usec else None


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    env_name = ENV_PREFIX + "__".join(str(part) for part in error["loc"]).upper()
    got = error.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"setting {loc} ({env_name}): {error['msg']}{got_text}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment and the TOML file (`--config` or `EDGE_WORKER_CONFIG`).

    Raises ConfigError with one line per bad setting.
    """
    path = config_file or (
        Path(os.environ[ENV_PREFIX + "CONFIG"]) if os.environ.get(ENV_PREFIX + "CONFIG") else None
    )
    if path is not None and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        loaded = _FileSettings(**overrides)
    except ValidationError as exc:
        lines = [_describe(dict(err)) for err in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    return loaded
