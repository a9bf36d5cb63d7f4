"""Database outages: backoff bounds, and one log line when an outage starts and ends."""

from __future__ import annotations

import logging
import random

import pytest

from worker.queue.outage import BACKOFF_MAX_SECONDS, Outage, backoff_seconds


def test_backoff_doubles_with_jitter_up_to_a_ceiling() -> None:
    rng = random.Random(1)
    for failures, top in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 15.0), (50, 15.0)]:
        for _ in range(20):
            delay = backoff_seconds(failures, rng=rng)
            assert top / 2 <= delay <= top
    assert backoff_seconds(10_000) <= BACKOFF_MAX_SECONDS


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    outage = Outage("db.unavailable", "db.recovered")
    monkeypatch.setattr(logging.getLogger("edge_worker"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="edge_worker"):
        outage.ok()  # nothing to report while up
        for _ in range(5):
            outage.failed(RuntimeError("database is locked"))
        assert outage.down and outage.failures == 5
        outage.ok()
        outage.ok()
        outage.failed(RuntimeError(""))  # a new outage, with an empty message
    events = [r.getMessage() for r in caplog.records]
    assert events == ["db.unavailable", "db.recovered", "db.unavailable"]
    fields = [r.fields for r in caplog.records]  # type: ignore[attr-defined]
    assert fields[0] == {"error": "database is locked"}
    assert fields[1]["failed_calls"] == 5
    assert fields[2] == {"error": "RuntimeError('')"}


def test_the_store_turns_driver_outage_errors_into_database_unavailable() -> None:
    from sqlalchemy.exc import OperationalError

    from worker.queue.outage import DatabaseUnavailable, translate_outages

    @translate_outages
    class Store:
        def locked(self) -> None:
            raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))

        def buggy(self) -> None:
            raise ValueError("a bug, not an outage")

    with pytest.raises(DatabaseUnavailable, match="database is locked"):
        Store().locked()
    with pytest.raises(ValueError, match="a bug"):
        Store().buggy()
