"""The longest gap between two firings of an NCRONTAB schedule, without a cron library.

Azure Functions timers take six-field NCRONTAB expressions (seconds first). Custos needs
one number from such a schedule at run time: the longest time it can go without firing
(the audit checkpoint interval, docs/audit.md). croniter is a dev dependency only, and this
subset is small, so it is parsed here: per field `*`, `n`, `a-b`, `*/s`, `a/s`, `a-b/s` and
comma lists; month and weekday names (JAN, MON); weekday 7 is Sunday. Day of month and day
of week both restricted means both must match (NCrontab's rule, unlike Vixie cron's "or").
"""

from __future__ import annotations

import calendar
import functools
from datetime import date

_NAMES = {
    4: {m: i + 1 for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))},
    5: {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))},
}
# (lowest, highest) per field: second, minute, hour, day of month, month, day of week.
_BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_DAY = 86_400
# The Gregorian calendar repeats, weekdays included, every 400 years (146097 days).
_CYCLE_DAYS = 146_097


def _value(text: str, field: int) -> int:
    name = _NAMES.get(field, {}).get(text.upper())
    if name is not None:
        return name
    if not text.isdigit():
        raise ValueError(f"field {field + 1}: {text!r} is not a number")
    return int(text)


def _field(text: str, field: int) -> frozenset[int]:
    low, high = _BOUNDS[field]
    values: set[int] = set()
    for part in text.split(","):
        spec, _, step_text = part.partition("/")
        step = _value(step_text, field) if step_text else 1
        if step < 1:
            raise ValueError(f"field {field + 1}: step must be at least 1")
        if spec == "*":
            first, last = low, high
        elif "-" in spec:
            a, b = spec.split("-", 1)
            first, last = _value(a, field), _value(b, field)
        else:
            first = _value(spec, field)
            last = high if step_text else first
        if not low <= first <= last <= high:
            raise ValueError(f"field {field + 1}: {part!r} is outside {low}-{high} or reversed")
        values.update(range(first, last + 1, step))
    if field == 5 and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


@functools.cache
def longest_gap_s(expression: str) -> int:
    """The longest time, in seconds, between two consecutive firings of the schedule.

    Exact: every day of a full 400-year Gregorian cycle is checked unless the day fields
    are all `*`.

    Raises:
        ValueError: the expression is not six fields of the subset above, or never fires.
    """
    fields = expression.split()
    if len(fields) != 6:
        raise ValueError("must be an NCRONTAB expression with six fields, seconds first")
    seconds, minutes, hours, days, months, weekdays = (_field(text, i) for i, text in enumerate(fields))
    times = sorted(h * 3600 + m * 60 + s for h in hours for m in minutes for s in seconds)
    within_day = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0)
    if all(text == "*" for text in fields[3:]):
        return max(within_day, _DAY - times[-1] + times[0])
    start = date(2001, 1, 1).toordinal()
    firing_days = []
    # Month by month over the cycle, only the days the day-of-month field allows (this runs
    # at start-up, in load_settings: a day-by-day walk took about 0.2 s for "1 January").
    allowed_days = sorted(days)
    for year in range(2001, 2001 + 400):
        for month in sorted(months):
            first = date(year, month, 1).toordinal()
            length = calendar.monthrange(year, month)[1]
            for day in allowed_days:
                if day > length:
                    break
                ordinal = first + day - 1
                if ordinal % 7 in weekdays:  # ordinal 1 (1 January of year 1) was a Monday; 0 is Sunday
                    firing_days.append(ordinal - start)
    if not firing_days:
        raise ValueError("the schedule never fires")
    # The cycle wraps: its first firing day follows its last one.
    firing_days.append(firing_days[0] + _CYCLE_DAYS)
    across_days = max(b - a for a, b in zip(firing_days, firing_days[1:], strict=False)) * _DAY - times[-1] + times[0]
    return max(within_day, across_days)
