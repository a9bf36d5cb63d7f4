"""Pure time logic of schedules: cron triggers, fire times, catch-up and run windows.

Nothing here reads the clock or touches I/O: every function is given `now`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

_FIELDS_5 = ("minute", "hour", "day", "month", "day_of_week")
_FIELDS_6 = ("second", *_FIELDS_5)
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_ONE_MICROSECOND = timedelta(microseconds=1)


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; ValueError names what was wrong."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (expected an IANA name such as 'Europe/Berlin' or 'UTC')"
        ) from None


def _weekday(token: str) -> int:
    lowered = token.strip().lower()
    if lowered in _DAY_NAMES:
        return _DAY_NAMES.index(lowered)
    if lowered.isdigit() and 0 <= int(lowered) <= 7:
        return int(lowered)
    raise ValueError(f"bad weekday {token!r} (0-7 with 0 and 7 = Sunday, or sun..sat)")


def crontab_weekdays(field: str) -> str:
    """A crontab weekday field as APScheduler 3 weekday names.

    Crontab counts 0 (or 7) as Sunday; APScheduler 3 counts 0 as Monday. Spelling
    the days out by name removes the ambiguity.
    """
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        body, slash, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() else 0
        if slash and step < 1:
            raise ValueError(f"bad step in weekday field {part!r}")
        if body == "*":
            low, high = 0, 6
        elif "-" in body:
            first, _, last = body.partition("-")
            low, high = _weekday(first), _weekday(last)
        else:
            low = _weekday(body)
            high = 6 if slash else low
        if low > high:
            raise ValueError(f"weekday range {body!r} runs backwards")
        days.update(day % 7 for day in range(low, high + 1, step or 1))
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


def cron_trigger(expression: str, timezone: str = "UTC") -> CronTrigger:
    """An APScheduler CronTrigger for a crontab line in `timezone`.

    5 fields (minute hour day month weekday), 6 fields (second first), or an alias
    such as `@daily`. Weekday numbers follow crontab: 0 and 7 are Sunday.
    """
    parts = _ALIASES.get(expression.strip(), expression).split()
    if len(parts) not in (5, 6):
        raise ValueError(
            f"cron {expression!r} has {len(parts)} fields; expected 5 "
            "(minute hour day month weekday) or 6 (second minute hour day month weekday)"
        )
    values = dict(zip(_FIELDS_6 if len(parts) == 6 else _FIELDS_5, parts, strict=True))
    values.setdefault("second", "0")
    try:
        values["day_of_week"] = crontab_weekdays(values["day_of_week"])
        return CronTrigger(**values, timezone=zone(timezone))
    except ValueError as exc:
        raise ValueError(f"cron {expression!r}: {exc}") from None


def fire_after(trigger: CronTrigger, moment: datetime) -> datetime | None:
    """The first fire time strictly after `moment` (None if the trigger never fires again)."""
    found: datetime | None = trigger.get_next_fire_time(None, moment + _ONE_MICROSECOND)
    return found


def next_fires(trigger: CronTrigger, after: datetime, count: int) -> list[datetime]:
    """The next `count` fire times after `after`."""
    fires: list[datetime] = []
    moment: datetime | None = after
    while moment is not None and len(fires) < count:
        moment = fire_after(trigger, moment)
        if moment is not None:
            fires.append(moment)
    return fires


def fires_between(trigger: CronTrigger, after: datetime, until: datetime) -> Iterator[datetime]:
    """Fire times f with `after` < f <= `until`, oldest first."""
    moment = fire_after(trigger, after)
    while moment is not None and moment <= until:
        yield moment
        moment = fire_after(trigger, moment)


def latest_fire(trigger: CronTrigger, after: datetime, until: datetime) -> datetime | None:
    """The newest fire time f with `after` < f <= `until`, or None."""
    newest: datetime | None = None
    for moment in fires_between(trigger, after, until):
        newest = moment
    return newest


def missed_fire(
    last_fire: datetime | None, now: datetime, trigger: CronTrigger, grace: timedelta
) -> datetime | None:
    """The fire to catch up at start-up, or None.

    Fires after `last_fire` (the newest one recorded) and up to `now` were missed.
    Only the newest of them runs, and only if it is at most `grace` old: several
    missed fires coalesce into one. With no recorded fire the schedule never ran, so
    nothing was missed.
    """
    if last_fire is None:
        return None
    # Fires older than the grace period can never be chosen: start looking there.
    since = max(last_fire, now - grace - _ONE_MICROSECOND)
    return latest_fire(trigger, since, now)


# Run windows -------------------------------------------------------------------
_WINDOW = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class Window:
    """Wall-clock times in a pipeline's time zone; the start is inside, the end is not."""

    start: time
    end: time


@lru_cache(maxsize=256)
def parse_window(text: str) -> Window:
    """`"22:00-06:00"` as a Window; it crosses midnight when the end is before the start."""
    match = _WINDOW.match(text.replace(" ", ""))
    if match is None:
        raise ValueError(f"window {text!r} is not HH:MM-HH:MM (e.g. '22:00-06:00')")
    h1, m1, h2, m2 = (int(group) for group in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"window {text!r}: hours are 00-23 and minutes 00-59")
    window = Window(time(h1, m1), time(h2, m2))
    if window.start == window.end:
        raise ValueError(f"window {text!r} is empty: start and end are the same time")
    return window


def in_window(window: str | Window, now: datetime, tz: tzinfo) -> bool:
    """Whether `now` (timezone-aware) falls in the window, read on the wall clock of `tz`.

    Across a DST change the window follows the local clock: `22:00-06:00` ends at
    06:00 local time whatever the UTC offset, and wall times that a change skips
    never occur.
    """
    if now.tzinfo is None:
        raise ValueError("in_window needs a timezone-aware `now`")
    parsed = parse_window(window) if isinstance(window, str) else window
    local = now.astimezone(tz).time()
    if parsed.start < parsed.end:
        return parsed.start <= local < parsed.end
    return local >= parsed.start or local < parsed.end
