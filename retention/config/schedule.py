"""When ``retention serve`` runs a pass: APScheduler 3.x triggers from the policy's schedule.

Kept apart from the daemon so the trigger logic (cron or interval, jitter, the crontab
weekday numbering APScheduler does not follow) is unit-tested with fixed datetimes.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

# APScheduler 3.x ships no type information (no py.typed); its names are Any here.
from apscheduler.triggers.base import BaseTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from retention.core.policy import Schedule, format_duration

# A pass that wakes up late (a suspended host, a busy scheduler) still runs within an hour;
# several missed slots become one pass (coalesce), never a queue of them.
MISFIRE_GRACE_S = 3600


def make_trigger(schedule: Schedule, *, start: datetime | None = None) -> BaseTrigger:
    """The APScheduler trigger for ``schedule``; ``start`` anchors an interval (default now).

    Pure apart from APScheduler's own clock, so tests ask it ``get_next_fire_time(previous,
    now)`` with fixed datetimes.
    """
    zone = ZoneInfo(schedule.timezone)
    jitter = int(schedule.jitter.total_seconds()) if schedule.jitter else None
    if schedule.interval is not None:
        seconds = schedule.interval.total_seconds()
        return IntervalTrigger(seconds=seconds, start_date=start, timezone=zone, jitter=jitter)
    cron = schedule.effective_cron
    assert cron is not None  # there is always a cron line when there is no interval
    minute, hour, day, month, weekday = cron.split()
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=crontab_weekdays(weekday),
        timezone=zone,
        jitter=jitter,
    )


def job_options() -> dict[str, Any]:
    """One pass at a time; late slots coalesce into one pass instead of stacking up."""
    return {"max_instances": 1, "coalesce": True, "misfire_grace_time": MISFIRE_GRACE_S}


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_WEEKDAY_PART = re.compile(r"(\*|[a-z]+|\d+)(?:-([a-z]+|\d+))?(?:/(\d+))?")


def crontab_weekdays(field: str) -> str:
    """A crontab weekday field (0 and 7 are Sunday) as names, which APScheduler 3.x reads right.

    APScheduler 3.x counts 0 as Monday (its issue 286), so ``0 3 * * 0`` would run on
    Mondays. A field that is not plain crontab is returned unchanged for APScheduler to judge.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        expanded = _weekday_part(part)
        if expanded is None:
            return field
        days |= expanded
    return ",".join(_WEEKDAYS[day] for day in sorted(days))


def _weekday_part(part: str) -> set[int] | None:
    match = _WEEKDAY_PART.fullmatch(part)
    if match is None:
        return None
    first, last, step = match.groups()
    if first == "*":
        low, high = (0, 6) if last is None else (-1, -1)
    else:
        low = _weekday_number(first)
        high = _weekday_number(last) if last else (6 if step else low)
    if low < 0 or high < low or (step is not None and int(step) < 1):
        return None
    return {day % 7 for day in range(low, high + 1, int(step or 1))}


def _weekday_number(text: str) -> int:
    """0-7 as cron counts them, or a three-letter name; -1 for anything else."""
    if text.isdigit():
        return int(text) if int(text) <= 7 else -1
    return _WEEKDAYS.index(text) if text in _WEEKDAYS else -1


def describe_schedule(schedule: Schedule) -> str:
    if schedule.interval is not None:
        return f"every {format_duration(schedule.interval)}"
    return f"cron '{schedule.effective_cron}' {schedule.timezone}"
