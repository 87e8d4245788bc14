"""Maintenance windows and the low-usage gate of disruptive jobs.

A window opens at each fire of a cron expression and stays open for a duration. A
disruptive job (the weekly update, active diagnostics) that falls due waits for the
first window that is open at or after its due time, and inside it for the GPUs to have
been under a utilization threshold for a while; if that window closes first the run is
*missed* (recorded, exported, alerted) and the job waits for its next slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..durations import format_duration
from .cron import CronSpec

__all__ = ["UsageGate", "Window", "Windows"]


@dataclass(frozen=True)
class Window:
    start: CronSpec
    duration: float

    def containing(self, t: float) -> tuple[float, float] | None:
        begin = self.start.prev_at_or_before(t)
        return (begin, begin + self.duration) if t < begin + self.duration else None

    def next_after(self, t: float) -> tuple[float, float]:
        begin = self.start.next_after(t)
        return begin, begin + self.duration


class Windows:
    """Several windows; none configured means "any time"."""

    def __init__(self, windows: Sequence[Window]) -> None:
        self.windows = list(windows)

    @property
    def always(self) -> bool:
        return not self.windows

    def open_at(self, t: float) -> tuple[float, float] | None:
        """The open window holding ``t`` that closes last, if any."""
        spans = [s for w in self.windows if (s := w.containing(t)) is not None]
        return max(spans, key=lambda s: s[1]) if spans else None

    def next_open(self, t: float) -> tuple[float, float] | None:
        """The window open at ``t``, else the next one to open (None when always open)."""
        if self.always:
            return None
        current = self.open_at(t)
        if current is not None:
            return current
        return min((w.next_after(t) for w in self.windows), key=lambda s: s[0])


class UsageGate:
    """Open once every GPU has stayed under ``threshold`` for ``hold`` seconds.

    Fed with the highest GPU utilization (0..1) of each sample; a node without GPUs
    (``None``) has nothing to protect and counts as idle.
    """

    def __init__(self, threshold: float, hold: float) -> None:
        self.threshold = threshold
        self.hold = hold
        self.low_since: float | None = None
        self.last: float | None = None

    def observe(self, now: float, utilization: float | None) -> None:
        self.last = utilization
        if utilization is not None and utilization >= self.threshold:
            self.low_since = None
        elif self.low_since is None:
            self.low_since = now

    def reset(self) -> None:
        self.low_since = None
        self.last = None

    def satisfied(self, now: float) -> bool:
        return self.low_since is not None and now - self.low_since >= self.hold

    def reason(self, now: float) -> str:
        """Why the gate is closed, for `jobs list` and the history."""
        limit = f"{self.threshold:.0%}"
        if self.low_since is None:
            shown = "?" if self.last is None else f"{self.last:.0%}"
            return f"GPU utilization {shown} is not under {limit}"
        left = self.hold - (now - self.low_since)
        return (f"GPU utilization under {limit} for {format_duration(round(now - self.low_since))}"
                f", needs {format_duration(round(self.hold))} ({format_duration(round(left))} "
                "more)")
