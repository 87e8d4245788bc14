"""Small helpers shared by the host collectors: file reading and counter deltas."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client.core import Metric

__all__ = ["DeltaTracker", "non_empty", "read_text"]

K = TypeVar("K", bound=Hashable)


def read_text(path: Path) -> str:
    """The whole file as text; procfs files are small and read in one go.

    Undecodable bytes are kept as surrogate escapes, like ``os.fsdecode``.
    """
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def non_empty(families: list[Metric]) -> list[Metric]:
    """Drop families without samples (a rate family on the first collection)."""
    return [fam for fam in families if fam.samples]


class DeltaTracker(Generic[K]):
    """Per-key increase of monotonic counters between two collections.

    Call ``delta``/``rate`` for every key seen in one collection, then ``commit()``;
    keys not seen in that collection are forgotten. Each key keeps its own timestamp,
    so a collection that could not read the file (and did not call ``commit``) only
    stretches the next interval. A counter that went backwards (a reset or wrap) gives
    no value for that interval and becomes the new baseline.
    """

    __slots__ = ("_next", "_prev")

    def __init__(self) -> None:
        self._prev: dict[K, tuple[float, float]] = {}
        self._next: dict[K, tuple[float, float]] = {}

    def delta(self, key: K, value: float, now: float) -> tuple[float, float] | None:
        """(value increase, elapsed seconds) since the last commit, or None."""
        self._next[key] = (value, now)
        prev = self._prev.get(key)
        if prev is None:
            return None
        dv = value - prev[0]
        dt = now - prev[1]
        if dv < 0 or dt <= 0:
            return None
        return dv, dt

    def rate(self, key: K, value: float, now: float) -> float | None:
        """Increase per second since the last commit, or None."""
        d = self.delta(key, value, now)
        return None if d is None else d[0] / d[1]

    def commit(self) -> None:
        """Make this collection's values the baseline of the next one."""
        self._prev = self._next
        self._next = {}
