"""What every part of the job store shares: the database, the clock, and times measured
on the database's clock (PostgreSQL's `now()` when hosts share it; the store's Python
clock on SQLite, one host)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from worker.queue.models import Job


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def offset_clock(seconds: float) -> Callable[[], datetime]:
    """`utcnow` shifted by `seconds` (tests: a host whose clock is wrong); 0 is `utcnow`."""
    if not seconds:
        return utcnow
    shift = timedelta(seconds=seconds)
    return lambda: utcnow() + shift


class StoreBase:
    """The database and clock of a store; mixed into every part of `JobStore`."""

    db: Engine
    clock: Callable[[], datetime]
    _postgres: bool

    def _db_now(self) -> Any:
        """Now, on the database's clock: `now()` on PostgreSQL (every host shares it),
        the store's Python clock on SQLite (one host)."""
        return func.now() if self._postgres else self.clock()

    def _db_after(self, seconds: float) -> Any:
        """`seconds` from now on the database's clock (a lease's end, a retry's time)."""
        return self._db_now() + timedelta(seconds=seconds)

    def _db_time(self) -> datetime:
        """The database's time as a value (for many rows at once)."""
        if not self._postgres:
            return self.clock()
        with self.db.connect() as conn:
            value: datetime = conn.execute(select(func.now())).scalar_one()
        return value

    def _job_value(self, column: InstrumentedAttribute[Any], job_id: int) -> Any:
        """One column of one job (None if there is no such job)."""
        with self.db.connect() as conn:
            return conn.execute(select(column).where(Job.id == job_id)).scalar_one_or_none()

    def _read(self, stmt: Any) -> list[Any]:
        # Detached ORM objects: attributes stay readable after the session is closed.
        with Session(self.db, expire_on_commit=False) as session:
            return list(session.scalars(stmt).all())
