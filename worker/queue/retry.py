"""Retry policy: a pure decision from the attempt count, the error kind and the time."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_BACKOFF_SECONDS = 3600.0


@dataclass(frozen=True)
class RetryDecision:
    """`retry_at` set: queue again then. Otherwise final: `dead` if attempts ran out."""

    retry_at: datetime | None
    dead: bool


def decide_retry(
    *,
    attempts: int,
    max_attempts: int,
    retryable: bool,
    now: datetime,
    base_seconds: float,
    rng: random.Random | None = None,
) -> RetryDecision:
    """Exponential backoff with equal jitter (a delay drawn from the upper half of the
    doubling ceiling) for retryable errors, until attempts run out.

    Non-retryable errors (bad input) fail at once and are not `dead`: they are `failed`.
    """
    if not retryable:
        return RetryDecision(retry_at=None, dead=False)
    if attempts >= max_attempts:
        return RetryDecision(retry_at=None, dead=True)
    ceiling = min(MAX_BACKOFF_SECONDS, base_seconds * 2 ** max(attempts - 1, 0))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    return RetryDecision(retry_at=now + timedelta(seconds=delay), dead=False)
