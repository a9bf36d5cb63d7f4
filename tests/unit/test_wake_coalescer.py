"""NOTIFY wake-ups are coalesced: a flood costs at most one wake-up per poll interval,
while sparse notifications still wake at once."""

from __future__ import annotations

from worker.sources.pg_listen import FLOOD_COUNT, WakeCoalescer


def flood(coalescer: WakeCoalescer, start: float, seconds: float, per_second: int) -> int:
    """Wake-ups during a flood of `per_second` notifications for `seconds`."""
    wakes = 0
    step = 1.0 / per_second
    now = start
    while now < start + seconds:
        wakes += coalescer.notified(now)
        wakes += coalescer.due(now)
        now += step
    return wakes


def test_the_first_notification_wakes_at_once() -> None:
    coalescer = WakeCoalescer(0.5)
    assert coalescer.notified(100.0)
    assert not coalescer.due(100.0)


def test_a_flood_wakes_once_per_poll_interval() -> None:
    coalescer = WakeCoalescer(5.0)
    wakes = flood(coalescer, 100.0, 60.0, 2000)  # 120 000 notifications in a minute
    assert coalescer.flooding
    assert wakes <= 60 / 5 + 2  # the first two windows are short
    coalescer = WakeCoalescer(0.5)
    assert flood(coalescer, 100.0, 10.0, 5000) <= 10 / 0.5 + 2


def test_sparse_notifications_wake_at_once_even_with_a_long_poll_interval() -> None:
    coalescer = WakeCoalescer(30.0)
    assert all(coalescer.notified(100.0 + second) for second in range(20))


def test_after_a_flood_a_quiet_window_brings_prompt_wake_ups_back() -> None:
    coalescer = WakeCoalescer(10.0)
    flood(coalescer, 0.0, 5.0, 1000)
    assert coalescer.flooding
    now = 5.0
    while not coalescer.due(now):  # the held-back wake-up of the flood
        now += 0.1
    assert coalescer.notified(now + 10.0)  # one notification after a quiet window
    assert not coalescer.flooding
    assert coalescer.notified(now + 11.0)
    assert FLOOD_COUNT > 1


def test_nothing_is_held_back_without_notifications() -> None:
    coalescer = WakeCoalescer(0.5)
    assert coalescer.wait_for(0.0, 1.0) == 1.0
    assert not coalescer.due(10.0)
    assert coalescer.notified(0.0)
    assert not coalescer.notified(0.1)
    assert coalescer.wait_for(0.1, 1.0) <= 0.4 + 1e-9
    assert coalescer.due(0.5) and not coalescer.due(5.0)
