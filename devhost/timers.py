"""Timer triggers: NCRONTAB schedules and the background loop that fires them.

Schedules use the Functions host's NCRONTAB format: six fields with seconds first
(``"0 */5 * * * *"``); like the host, five-field expressions (no seconds) are accepted
too. A schedule written as ``%SETTING_NAME%`` is read from that app setting
(environment variable). Times are UTC, the host's default.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
from croniter import croniter

__all__ = ["DevTimerRequest", "next_fire", "resolve_schedule", "run_timer_loop", "timer_request"]

log = logging.getLogger("devhost.timers")

#: Longest single sleep, so a changed wall clock (suspend, NTP) is noticed.
_MAX_SLEEP = 60.0
#: A run this late (woken up after the fire time) is reported as past due.
_PAST_DUE_AFTER = timedelta(seconds=1)

_SETTING_REF = re.compile(r"%([^%]+)%")


class DevTimerRequest(func.TimerRequest):
    """Concrete ``azure.functions.TimerRequest`` (the package only ships the abstract one)."""

    def __init__(
        self,
        *,
        past_due: bool = False,
        schedule_status: dict[str, Any] | None = None,
        schedule: dict[str, Any] | None = None,
    ) -> None:
        self._past_due = past_due
        self.schedule_status: dict[str, Any] = schedule_status or {}
        self.schedule: dict[str, Any] = schedule or {}

    @property
    def past_due(self) -> bool:
        return self._past_due


def resolve_schedule(schedule: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace ``%NAME%`` references with app settings; raise ValueError if one is unset."""
    env = os.environ if environ is None else environ

    def lookup(found: re.Match[str]) -> str:
        name = found.group(1)
        if name not in env:
            raise ValueError(f"schedule setting {name!r} is not set")
        return env[name]

    return _SETTING_REF.sub(lookup, schedule).strip()


def _croniter(expression: str, start: datetime) -> croniter:
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"NCRONTAB needs 6 fields (seconds first) or 5: {expression!r}")
    try:
        return croniter(" ".join(fields), start, second_at_beginning=len(fields) == 6)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"invalid NCRONTAB schedule {expression!r}: {exc}") from exc


def next_fire(expression: str, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (aware datetimes; naive = UTC)."""
    if after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    result: datetime = _croniter(expression, after).get_next(datetime)
    return result


def timer_request(expression: str, *, past_due: bool, last: datetime | None) -> DevTimerRequest:
    """A timer request shaped like the host's (``ScheduleStatus`` with Last/Next)."""
    now = datetime.now(UTC)
    status: dict[str, Any] = {
        "Last": (last or now).isoformat(),
        "Next": next_fire(expression, now).isoformat(),
        "LastUpdated": now.isoformat(),
    }
    return DevTimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})


async def run_timer_loop(
    name: str,
    expression: str,
    run: Callable[[DevTimerRequest], Awaitable[None]],
    *,
    run_on_startup: bool = False,
) -> None:
    """Fire ``run`` on every occurrence of ``expression`` until cancelled.

    ``run`` is expected to log its own failures; anything that still escapes is logged
    here so one bad run never stops the schedule. Missed occurrences are skipped, not
    replayed; a late run gets ``past_due=True``.
    """
    last: datetime | None = None

    async def fire(past_due: bool) -> None:
        nonlocal last
        try:
            await run(timer_request(expression, past_due=past_due, last=last))
        except Exception:
            log.exception("Timer function %r failed", name)
        last = datetime.now(UTC)

    if run_on_startup:
        await fire(past_due=False)
    due = next_fire(expression, datetime.now(UTC))
    while True:
        while (remaining := (due - datetime.now(UTC)).total_seconds()) > 0:
            await asyncio.sleep(min(remaining, _MAX_SLEEP))
        now = datetime.now(UTC)
        await fire(past_due=now - due > _PAST_DUE_AFTER)
        due = next_fire(expression, max(datetime.now(UTC), due))
