"""Has a file finished arriving? A pure decision over successive observations."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Observation:
    """What we know of one candidate file."""

    size: int
    mtime_ns: int
    stable_since: float  # monotonic seconds when size and mtime were last seen to change
    closed: bool = False  # a close-after-write event arrived since the last change


def observe(
    previous: Observation | None, size: int, mtime_ns: int, now: float, closed: bool = False
) -> Observation:
    """Fold a new stat (and whether a close-after-write was seen) into the observation."""
    if previous is None or (previous.size, previous.mtime_ns) != (size, mtime_ns):
        return Observation(size=size, mtime_ns=mtime_ns, stable_since=now, closed=closed)
    return replace(previous, closed=previous.closed or closed)


def is_settled(obs: Observation, now: float, wall_now_ns: int, settle_seconds: float) -> bool:
    """Settled: closed after its last write, or unchanged for `settle_seconds`.

    A file whose mtime is already older than the settle time (present at start-up)
    is settled at once.
    """
    if obs.closed:
        return True
    if wall_now_ns - obs.mtime_ns >= settle_seconds * 1e9:
        return True
    return now - obs.stable_since >= settle_seconds
