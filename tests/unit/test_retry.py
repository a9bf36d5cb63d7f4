"""Retry policy: backoff with jitter, dead after max_attempts, bad input fails at once."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from worker.queue.retry import decide_retry

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_non_retryable_errors_fail_at_once() -> None:
    decision = decide_retry(attempts=1, max_attempts=5, retryable=False, now=NOW, base_seconds=5)
    assert decision.retry_at is None and not decision.dead


def test_retryable_errors_back_off_exponentially_within_jitter_bounds() -> None:
    rng = random.Random(1)
    for attempts, ceiling in [(1, 5), (2, 10), (3, 20)]:
        decision = decide_retry(
            attempts=attempts, max_attempts=10, retryable=True, now=NOW, base_seconds=5, rng=rng
        )
        assert decision.retry_at is not None
        delay = decision.retry_at - NOW
        assert timedelta(seconds=ceiling / 2) <= delay <= timedelta(seconds=ceiling)


def test_attempts_exhausted_means_dead() -> None:
    decision = decide_retry(attempts=3, max_attempts=3, retryable=True, now=NOW, base_seconds=5)
    assert decision.retry_at is None and decision.dead
