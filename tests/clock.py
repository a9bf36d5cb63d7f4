"""A fixed clock for stores under test."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime


def frozen(at: datetime) -> Callable[[], datetime]:
    """A clock that always says `at`."""
    return lambda: at
