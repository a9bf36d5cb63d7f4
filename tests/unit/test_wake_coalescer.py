"""NOTIFY wake-ups are coalesced: a flood costs at most one wake-up per interval."""

from __future__ import annotations

from worker.sources.pg_listen import WakeCoalescer


def test_the_first_notification_wakes_at_once() -> None:
    coalescer = WakeCoalescer(0.5)
    assert coalescer.notified(100.0)
    assert not coalescer.due(100.0)


def test_a_flood_wakes_once_per_interval_and_once_more_at_its_end() -> None:
    coalescer = WakeCoalescer(0.5)
    wakes = 0
    now = 100.0
    for _ in range(10_000):  # 10 000 notifications over 2 seconds
        now += 0.0002
        wakes += coalescer.notified(now)
        wakes += coalescer.due(now)
    assert 4 <= wakes <= 5
    # The last held-back notification is delivered once the interval has passed.
    assert coalescer.wait_for(now, 1.0) <= 0.5
    final = coalescer.due(now + 0.5)
    assert final or wakes == 5
    assert not coalescer.due(now + 5)  # and only once


def test_nothing_is_held_back_without_notifications() -> None:
    coalescer = WakeCoalescer(0.5)
    assert coalescer.wait_for(0.0, 1.0) == 1.0
    assert not coalescer.due(10.0)
