"""'Has this file finished arriving?' as a pure function of observations and time."""

from __future__ import annotations

from worker.sources.settle import is_settled, observe

SEC = 1_000_000_000


def test_growing_file_is_not_settled_until_stable_for_settle_time() -> None:
    wall = 1_000 * SEC
    obs = observe(None, size=10, mtime_ns=wall, now=0.0)
    assert not is_settled(obs, now=0.5, wall_now_ns=wall + SEC // 2, settle_seconds=1.0)
    obs = observe(obs, size=20, mtime_ns=wall + SEC // 2, now=0.5)  # still growing
    assert not is_settled(obs, now=1.2, wall_now_ns=wall + 12 * SEC // 10, settle_seconds=1.0)
    obs = observe(obs, size=20, mtime_ns=wall + SEC // 2, now=1.6)
    assert is_settled(obs, now=1.6, wall_now_ns=wall + 16 * SEC // 10, settle_seconds=1.0)


def test_close_after_write_settles_at_once() -> None:
    obs = observe(None, size=10, mtime_ns=5 * SEC, now=0.0, closed=True)
    assert is_settled(obs, now=0.0, wall_now_ns=5 * SEC, settle_seconds=10.0)


def test_a_write_after_close_resets_closed() -> None:
    obs = observe(None, size=10, mtime_ns=5 * SEC, now=0.0, closed=True)
    obs = observe(obs, size=30, mtime_ns=6 * SEC, now=1.0)
    assert not obs.closed
    assert not is_settled(obs, now=1.0, wall_now_ns=6 * SEC, settle_seconds=10.0)


def test_old_file_present_at_start_up_is_settled_immediately() -> None:
    obs = observe(None, size=10, mtime_ns=0, now=100.0)
    assert is_settled(obs, now=100.0, wall_now_ns=3600 * SEC, settle_seconds=2.0)
