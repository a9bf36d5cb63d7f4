"""Shared fixtures: settings on a temp data dir, the real model, SQLite and PostgreSQL stores."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from worker.config import Settings, load_settings
from worker.queue.database import make_db_engine
from worker.queue.jobs import JobStore
from worker.queue.migrate import upgrade

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "var" / "models" / "gemma-3-270m-q4_k_m.gguf"


def model_path() -> Path:
    """The real Gemma GGUF that `make test` prepares (EDGE_WORKER_TEST_MODEL overrides)."""
    path = Path(os.environ.get("EDGE_WORKER_TEST_MODEL", DEFAULT_MODEL))
    if not path.is_file():
        pytest.fail(f"model {path} is missing: run `make model` (make test does it)")
    return path


@pytest.fixture(scope="session")
def gguf() -> Path:
    return model_path()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on an empty temp data dir; the models folder is the prepared model's (not
    required to exist: unit tests never load it)."""
    model = Path(os.environ.get("EDGE_WORKER_TEST_MODEL", DEFAULT_MODEL))
    return load_settings(
        data_dir=tmp_path / "data",
        models_dir=model.parent,
        settle_seconds=0.2,
        rescan_interval=1.0,
        sweep_interval=0.5,
        poll_interval=0.1,
        retry_base_seconds=0.1,
        parallel=1,  # one slot: runner tests reason about one job at a time
    )


@pytest.fixture
def store(settings: Settings) -> JobStore:
    """A migrated SQLite store in the temp data dir."""
    url = settings.resolved_database_url
    upgrade(url)
    return JobStore(make_db_engine(url))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (skips without EDGE_WORKER_TEST_PG_URL)."""
    base = os.environ.get("EDGE_WORKER_TEST_PG_URL")
    if not base:
        pytest.skip("EDGE_WORKER_TEST_PG_URL is not set (CI sets it; no PostgreSQL here)")
    name = f"ew_test_{uuid.uuid4().hex[:12]}"
    admin = make_db_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def job_store(db_url: str) -> JobStore:
    """A migrated store on each of `db_url`'s databases."""
    upgrade(db_url)
    return JobStore(make_db_engine(db_url))


def run_sql(url: str, sql: str, **params: Any) -> list[Any]:
    """Plain SQL on a test database, as another program would run it; rows, if any."""
    engine = make_db_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


@pytest.fixture
def events(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], list[logging.LogRecord]]]:
    """The `edge_worker` events logged during the test, by name."""
    monkeypatch.setattr(logging.getLogger("edge_worker"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="edge_worker"):
        yield lambda name: [r for r in caplog.records if r.getMessage() == name]
