"""Pure schedule logic with given times: cron, catch-up, run windows (midnight, DST)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from worker.pipelines.schedule_time import (
    cron_trigger,
    crontab_weekdays,
    fire_after,
    in_window,
    missed_fire,
    next_fires,
    parse_window,
)

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz: ZoneInfo | None = None) -> datetime:
    """`2026-03-01 12:00:00` in `tz` (default UTC)."""
    return datetime.fromisoformat(text).replace(tzinfo=tz or UTC)


# Cron ----------------------------------------------------------------------------
def test_six_fields_put_seconds_first() -> None:
    trigger = cron_trigger("*/5 * * * * *")
    fires = next_fires(trigger, at("2026-03-01 12:00:01"), 3)
    assert fires == [
        at("2026-03-01 12:00:05"),
        at("2026-03-01 12:00:10"),
        at("2026-03-01 12:00:15"),
    ]


def test_five_fields_fire_on_the_minute() -> None:
    trigger = cron_trigger("30 2 * * *", "Europe/Berlin")
    (fire,) = next_fires(trigger, at("2026-01-10 12:00:00"), 1)
    assert fire == at("2026-01-11 02:30:00", BERLIN)


def test_fire_after_is_strictly_after() -> None:
    trigger = cron_trigger("*/5 * * * * *")
    assert fire_after(trigger, at("2026-03-01 12:00:05")) == at("2026-03-01 12:00:10")


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("sat,0", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("5-7", "sun,fri,sat"),
        ("*", "*"),
    ],
)
def test_weekdays_follow_crontab_not_apscheduler(field: str, expected: str) -> None:
    assert crontab_weekdays(field) == expected


def test_sunday_zero_fires_on_a_sunday() -> None:
    trigger = cron_trigger("0 9 * * 0")
    (fire,) = next_fires(trigger, at("2026-03-02 00:00:00"), 1)  # a Monday
    assert fire == at("2026-03-08 09:00:00")
    assert fire.strftime("%A") == "Sunday"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "has 4 fields"),
        ("61 * * * *", "cron '61 \\* \\* \\* \\*'"),
        ("0 0 * * 8", "bad weekday"),
        ("0 0 * * fri-mon", "runs backwards"),
    ],
)
def test_bad_cron_is_refused_with_a_reason(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cron_trigger(expression)


def test_alias_daily() -> None:
    (fire,) = next_fires(cron_trigger("@daily"), at("2026-03-01 12:00:00"), 1)
    assert fire == at("2026-03-02 00:00:00")


# Catch-up ------------------------------------------------------------------------
EVERY_10S = cron_trigger("*/10 * * * * *")
HOUR = timedelta(hours=1)


def test_two_missed_fires_coalesce_into_the_newest() -> None:
    last = at("2026-03-01 12:00:00")
    now = at("2026-03-01 12:00:25")  # 12:00:10 and 12:00:20 were missed
    assert missed_fire(last, now, EVERY_10S, HOUR) == at("2026-03-01 12:00:20")


def test_nothing_missed_when_the_last_fire_is_the_newest() -> None:
    last = at("2026-03-01 12:00:20")
    assert missed_fire(last, at("2026-03-01 12:00:29.9"), EVERY_10S, HOUR) is None


def test_a_fire_exactly_now_counts_as_missed() -> None:
    last = at("2026-03-01 12:00:00")
    assert missed_fire(last, at("2026-03-01 12:00:10"), EVERY_10S, HOUR) == at(
        "2026-03-01 12:00:10"
    )


def test_a_missed_fire_older_than_the_grace_is_dropped() -> None:
    nightly = cron_trigger("0 2 * * *")
    last = at("2026-03-01 02:00:00")
    assert missed_fire(last, at("2026-03-02 02:59:00"), nightly, HOUR) == at("2026-03-02 02:00:00")
    assert missed_fire(last, at("2026-03-02 03:00:01"), nightly, HOUR) is None
    # grace is inclusive
    assert missed_fire(last, at("2026-03-02 03:00:00"), nightly, HOUR) == at("2026-03-02 02:00:00")


def test_never_fired_means_nothing_missed() -> None:
    assert missed_fire(None, at("2026-03-01 12:00:25"), EVERY_10S, HOUR) is None


def test_long_downtime_with_a_fast_schedule_is_quick() -> None:
    every_second = cron_trigger("* * * * * *")
    last = at("2026-01-01 00:00:00")
    now = at("2026-03-01 00:00:00.5")  # two months of per-second fires missed
    grace = timedelta(seconds=30)
    assert missed_fire(last, now, every_second, grace) == at("2026-03-01 00:00:00")


# Windows -------------------------------------------------------------------------
def test_window_inside_one_day() -> None:
    assert in_window("09:00-17:00", at("2026-03-01 09:00:00"), UTC)
    assert in_window("09:00-17:00", at("2026-03-01 16:59:59"), UTC)
    assert not in_window("09:00-17:00", at("2026-03-01 17:00:00"), UTC)
    assert not in_window("09:00-17:00", at("2026-03-01 08:59:59"), UTC)


def test_window_crossing_midnight() -> None:
    window = "22:00-06:00"
    assert in_window(window, at("2026-03-01 22:00:00"), UTC)
    assert in_window(window, at("2026-03-01 23:59:59"), UTC)
    assert in_window(window, at("2026-03-02 00:00:00"), UTC)
    assert in_window(window, at("2026-03-02 05:59:59"), UTC)
    assert not in_window(window, at("2026-03-02 06:00:00"), UTC)
    assert not in_window(window, at("2026-03-02 12:00:00"), UTC)
    assert not in_window(window, at("2026-03-02 21:59:59"), UTC)


def test_window_is_read_in_the_pipelines_time_zone() -> None:
    # 21:30 UTC is 22:30 in Berlin in winter (UTC+1): inside the Berlin window.
    assert in_window("22:00-06:00", at("2026-01-15 21:30:00"), BERLIN)
    assert not in_window("22:00-06:00", at("2026-01-15 21:30:00"), UTC)


def test_window_follows_the_wall_clock_across_spring_forward() -> None:
    # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    window = "22:00-06:00"
    assert in_window(window, at("2026-03-29 03:59:00"), BERLIN)  # 05:59 CEST
    assert not in_window(window, at("2026-03-29 04:00:00"), BERLIN)  # 06:00 CEST
    assert in_window(window, at("2026-03-28 04:59:00"), BERLIN)  # 05:59 CET, day before
    # A window inside the skipped hour never opens that night.
    skipped = "02:00-03:00"
    assert not in_window(skipped, at("2026-03-29 00:59:59"), BERLIN)  # 01:59:59 CET
    assert not in_window(skipped, at("2026-03-29 01:00:00"), BERLIN)  # 03:00 CEST


def test_window_follows_the_wall_clock_across_fall_back() -> None:
    # Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:xx happens twice.
    window = "02:00-03:00"
    assert not in_window(window, at("2026-10-24 23:59:00"), BERLIN)  # 01:59 CEST
    assert in_window(window, at("2026-10-25 00:30:00"), BERLIN)  # 02:30 CEST
    assert in_window(window, at("2026-10-25 01:30:00"), BERLIN)  # 02:30 CET, again
    assert not in_window(window, at("2026-10-25 02:00:00"), BERLIN)  # 03:00 CET


@pytest.mark.parametrize(
    ("text", "message"),
    [("22-06", "not HH:MM-HH:MM"), ("24:00-06:00", "hours are 00-23"), ("06:00-06:00", "is empty")],
)
def test_bad_window_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(text)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        in_window("22:00-06:00", datetime(2026, 3, 1, 23, 0), UTC)
