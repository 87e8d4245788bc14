"""Cron expressions (croniter) evaluated in the node's time zone.

Five fields (``min hour dom mon dow``), the ``@hourly``/``@daily``/``@weekly``/``@monthly``
aliases, and croniter's optional sixth field, seconds (``* * * * * */10``: every ten
seconds), which short test schedules use.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, tzinfo
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

__all__ = ["CronSpec", "check_cron", "resolve_timezone"]

_SOME_START = 1_767_225_600.0  # 2026-01-01: any fixed start will do


def resolve_timezone(name: str) -> tzinfo:
    """An IANA zone such as ``Europe/Berlin``; empty means the system's local zone ($TZ,
    else /etc/localtime), with its daylight-saving rules: a fixed UTC offset would move
    every slot by an hour twice a year."""
    if not name:
        env = os.environ.get("TZ", "").lstrip(":")
        if env:
            with contextlib.suppress(ZoneInfoNotFoundError, ValueError, OSError):
                return ZoneInfo(env)
        with contextlib.suppress(OSError, ValueError), open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
        local = datetime.now().astimezone().tzinfo  # last resort: today's offset
        assert local is not None
        return local
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as "
                         "'UTC' or 'Europe/Berlin')") from None


def check_cron(expr: str) -> str:
    """``expr`` if croniter accepts it; a readable ValueError otherwise."""
    try:
        it = croniter(expr, datetime.fromtimestamp(_SOME_START, UTC))
    except (CroniterError, ValueError, KeyError) as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc} (five fields: minute "
                         "hour day-of-month month day-of-week, e.g. '0 3 * * *')") from None
    try:  # parses, but may name a day that never comes (31 February)
        it.get_next(float)
    except (CroniterError, ValueError, OverflowError):
        raise ValueError(f"cron expression {expr!r} never fires (a date that does not "
                         "exist, such as 31 February?)") from None
    return expr


class CronSpec:
    """One cron expression in one time zone; times are unix seconds."""

    def __init__(self, expr: str, tz: tzinfo) -> None:
        self.expr = check_cron(expr)
        self.tz = tz

    def __repr__(self) -> str:
        return f"CronSpec({self.expr!r})"

    def _iter(self, t: float) -> croniter:
        return croniter(self.expr, datetime.fromtimestamp(t, self.tz))

    def next_after(self, t: float) -> float:
        """The first fire time strictly after ``t``."""
        return float(self._iter(t).get_next(float))

    def prev_at_or_before(self, t: float) -> float:
        """The last fire time at or before ``t``."""
        nxt = self.next_after(t - 1e-3)
        if nxt <= t:
            return nxt
        return float(self._iter(t).get_prev(float))

    @cached_property
    def period(self) -> float:
        """The longest gap between consecutive fires over a year of them (at most 400)."""
        t = self.next_after(_SOME_START)
        gap = 0.0
        for _ in range(400):
            n = self.next_after(t)
            gap = max(gap, n - t)
            t = n
            if t > _SOME_START + 366 * 86400:
                break
        return gap
