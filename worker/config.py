"""Settings: environment (`EDGE_WORKER_*`, nested with `__`) over an optional TOML file.

This is the only module that reads the environment.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "EDGE_WORKER_"
DEFAULT_MODEL_NAME = "gemma-3-270m"
# How long one SQLite statement waits for the write lock (worker.queue.database sets it);
# here because the settings' check of stall_seconds needs it too.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# The shipped pipelines are package data (a symlink `pipelines/` points here from a checkout).
SHIPPED_PIPELINES_DIR = Path(str(files("worker.pipelines") / "shipped"))


class ConfigError(Exception):
    """A setting is invalid; the message names the setting and what it accepts."""


class ModelSpec(BaseModel):
    """One entry of the model table: a GGUF file, its expected sha256, what it serves
    (generation or embeddings), and llama.cpp settings of its own. An unset setting is
    the global one (`n_ctx`, `parallel`, `n_gpu_layers`, `n_threads`)."""

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
    kind: Literal["generate", "embed"] = Field(
        default="generate", description="generate: text and JSON; embed: pooled embeddings"
    )
    n_ctx: int | None = Field(default=None, ge=64, le=1_048_576)
    parallel: int | None = Field(default=None, ge=1, le=256, description="sequences at once")
    n_gpu_layers: int | None = Field(default=None, ge=-1)
    n_threads: int | None = Field(default=None, ge=1, le=1024)
    # Embedding models only: the pooling (default: the one the GGUF declares, else mean)
    # and whether vectors are scaled to unit length.
    pooling: Literal["mean", "cls", "last"] | None = None
    normalize: bool = True

    @model_validator(mode="after")
    def _embed_fields(self) -> ModelSpec:
        if self.kind != "embed" and self.pooling is not None:
            raise ValueError('pooling needs kind = "embed"')
        return self


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

    # What the models may take together: bytes ("6GiB", "512M", a number) or a share of
    # the memory this daemon may use (RAM, or the cgroup's limit under systemd's
    # MemoryMax=; on GPUs a share is of each GPU's memory, bytes mean 90% of it).
    memory_budget: str = Field(default="75%", description='bytes or a share, e.g. "70%"')
    # The longest a model's ready jobs wait for memory held by other models that still
    # have work, before those are drained and unloaded for it (a swap).
    model_max_wait: float = Field(default=120.0, ge=0, description="seconds")

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
    # of the data folder's group (edge-worker-submit under systemd) can drop files; sticky,
    # so a submitter cannot delete or replace another's pending file.
    inbox_mode: int = Field(default=0o3770, ge=0o700, le=0o7777)
    # Outputs of inbox files in outbox/<pipeline>/<uid>/ (the uid owning the input), so
    # two submitters' `report.txt` never overwrite each other's result. Off: one flat
    # outbox/<pipeline>/ (the shipped systemd config turns it on).
    outputs_per_submitter: bool = False
    # What one schedule fire may walk of its sweep globs (links are never followed):
    # entries seen, and seconds. A fire that runs out logs sweep.truncated. The same
    # budget, files read and seconds, bounds what a fire takes of a scheduled inbox
    # (inbox.truncated; the rest waits for the next fire).
    sweep_max_entries: int = Field(default=100_000, ge=1)
    sweep_max_seconds: float = Field(default=60.0, gt=0)
    # The parsing sandbox (worker/sandbox/): untrusted bytes become text, records,
    # requests or validated JSON in warm child processes under these limits. A task over
    # one kills its child and fails the job with "input too costly to parse: ...".
    parse_cpu_seconds: float = Field(default=30.0, gt=0, le=86_400)
    parse_memory_bytes: int = Field(default=1 << 30, ge=256 << 20)
    parse_timeout: float = Field(default=60.0, gt=0, le=86_400)
    sandbox_processes: int = Field(default=2, ge=1, le=64)
    sandbox_recycle_after: int = Field(default=500, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    # A job in flight when its worker died is a suspect and runs alone; a job that
    # crashes the worker this many times while running alone is `dead` (the cause).
    # Each one more lets an unrelated kill of a lone job (kill -9, a power cut) pass,
    # and costs one more restart per poison input.
    max_solo_crashes: int = Field(default=1, ge=1, le=1000)
    retry_base_seconds: float = Field(default=5.0, ge=0)
    shutdown_timeout: float = Field(default=30.0, ge=0)
    # Wall-clock seconds one attempt at a job may take, all of it: reading and parsing the
    # input, expanding, generating, map-reduce, writing (0: no limit).
    job_timeout: float = Field(default=3600.0, ge=0)
    # A thread at work (a slot's job, a service loop's step, a llama.cpp decode call)
    # that gives no sign of life for this long is stuck: the systemd watchdog stops
    # being fed (every bounded wait beats, see worker/liveness.py).
    stall_seconds: float = Field(default=120.0, gt=0)
    # A job naming a pipeline this daemon does not know waits this long (a pipeline file
    # may be on its way, then `systemctl reload`) before it fails for good.
    unknown_pipeline_grace: float = Field(default=600.0, ge=0)

    # Bounds on every wait for PostgreSQL (SQLite: its busy timeout). A connection that
    # cannot be made, a statement that runs or waits for a lock too long, or a server
    # that stops answering (keepalives) fails that call: the caller retries with backoff.
    db_connect_timeout: float = Field(default=10.0, gt=0, description="seconds to connect")
    db_statement_timeout: float = Field(
        default=60.0,
        ge=0,
        description="seconds a statement may run (0, no limit, only without PostgreSQL: "
        "with db_connect_timeout it must stay under stall_seconds)",
    )
    db_lock_timeout: float = Field(
        default=15.0, ge=0, description="seconds a statement may wait for a lock (0: no limit)"
    )
    # How long start-up retries the database (migrations) before giving up, within
    # systemd's TimeoutStartSec.
    db_start_timeout: float = Field(default=120.0, ge=0)

    metrics_file: Path | None = Field(
        default=None, description="Prometheus text file; default <data_dir>/metrics.prom"
    )
    metrics_interval: float = Field(default=5.0, gt=0, description="seconds between rewrites")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="the HTTP port: /metrics, /healthz, console"
    )
    # The HTTP port's address: loopback unless the operator binds elsewhere on purpose.
    http_bind: str = Field(default="127.0.0.1", min_length=1, description="address of the port")
    http_max_connections: int = Field(
        default=64, ge=4, le=4096, description="open connections on the port at once"
    )
    http_timeout: float = Field(
        default=5.0, gt=0, le=120, description="seconds a client has to send its request"
    )
    # Host names the port answers to besides loopback, the bind address and this
    # machine's names: a page elsewhere cannot read the port through DNS rebinding.
    http_allowed_hosts: list[str] = Field(default_factory=list)
    # The port's job-table numbers (healthz, metrics, console) come from one snapshot,
    # read this often by one loop; no request queries the database.
    snapshot_interval: float = Field(default=3.0, ge=0.2, le=300)
    console: bool = Field(default=False, description="serve the web console on the port")
    console_actions: bool = Field(
        default=False, description="allow retry, cancel, pause from the console (needs a token)"
    )
    console_token_file: Path | None = Field(
        default=None, description="file holding the console's action token"
    )
    console_retry_limit: int = Field(
        default=100, ge=1, le=10_000, description="most jobs one 'retry all matching' queues"
    )

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

    @model_validator(mode="after")
    def _console_needs(self) -> Settings:
        if self.console and self.metrics_port is None:
            raise ValueError("console needs metrics_port (the port it is served on)")
        if self.console_actions and not self.console:
            raise ValueError("console_actions needs console = true")
        if self.console_actions and self.console_token_file is None:
            raise ValueError("console_actions needs console_token_file (the action token)")
        return self

    @model_validator(mode="after")
    def _waits_fit_the_stall_bound(self) -> Settings:
        # A heartbeat at work (the dispatcher's round, a slot's job) is a stall once silent
        # for stall_seconds, and one database call does not beat while it waits (each
        # beats as it starts and as it fails: worker.queue.database.beating). So every
        # wait that is legal by these settings must end within stall_seconds, or the
        # watchdog restarts a daemon that was only waiting on a legal query:
        # - the dispatcher waits poll_interval between rounds (idle) but a round is busy;
        #   stall_seconds must be longer than a poll so the two never blur;
        # - PostgreSQL: one call may make a connection (db_connect_timeout) and then run a
        #   statement to its db_statement_timeout. That timeout must be positive: 0 (no
        #   limit) lets a statement outlast stall_seconds, and the watchdog would restart
        #   the daemon instead of failing the call. db_lock_timeout needs no check: lock
        #   waits count toward statement_timeout, so 0 or a larger value is still bounded;
        # - SQLite: a statement waits up to the busy timeout for the write lock.
        if self.stall_seconds <= self.poll_interval:
            raise ValueError(
                f"stall_seconds ({self.stall_seconds:g}) must be greater than poll_interval "
                f"({self.poll_interval:g})"
            )
        backend = self.resolved_database_url.partition(":")[0].partition("+")[0]
        if backend == "postgresql":
            if self.db_statement_timeout <= 0:
                raise ValueError(
                    "db_statement_timeout must be positive with PostgreSQL: without a limit "
                    f"one statement can outlast stall_seconds ({self.stall_seconds:g}) and the "
                    "watchdog restarts the daemon"
                )
            waited = self.db_connect_timeout + self.db_statement_timeout
            if waited >= self.stall_seconds:
                raise ValueError(
                    f"db_connect_timeout ({self.db_connect_timeout:g}) + db_statement_timeout "
                    f"({self.db_statement_timeout:g}) must be less than stall_seconds "
                    f"({self.stall_seconds:g}): one database call may wait that long"
                )
            # A wait for a pooled connection, then the check of a dead one: both bounded
            # by db_connect_timeout, with no beat between them.
            if 2 * self.db_connect_timeout >= self.stall_seconds:
                raise ValueError(
                    f"twice db_connect_timeout ({self.db_connect_timeout:g}) must be less than "
                    f"stall_seconds ({self.stall_seconds:g}): a wait for a pooled connection "
                    "and the check of a dead one may take that long"
                )
        elif backend == "sqlite":
            busy = SQLITE_BUSY_TIMEOUT_MS / 1000
            if self.stall_seconds <= busy:
                raise ValueError(
                    f"stall_seconds ({self.stall_seconds:g}) must be greater than SQLite's "
                    f"busy timeout ({busy:g} s): one database call may wait that long"
                )
        return self

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> Any:
        from worker.llm.memory import BudgetError, parse_budget

        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            try:
                parse_budget(value)
            except BudgetError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("output_mode", "inbox_mode", mode="before")
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
    if not error["loc"]:  # a rule across settings (model validator)
        return f"settings: {str(error['msg']).removeprefix('Value error, ')}"
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
