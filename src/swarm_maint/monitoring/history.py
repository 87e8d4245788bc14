"""Metric history: raw samples of the last minutes in memory, a downsampled record in SQLite.

In memory, every series is a fixed ring of float64 values aligned with one shared ring
of timestamps (NaN where a series had no sample), so a 15-minute window at 1 s costs
8 bytes per point and recording a frame allocates nothing for known series.
For SQLite, samples are folded into steps of ``resolution`` seconds (avg, min, max,
last, count per series); a finished step is written in one transaction and steps older
than ``retention`` are deleted.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import Metric

from ..store import Store

__all__ = ["Aggregate", "MetricHistory", "SeriesPoints"]

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
Aggregate = Literal["avg", "min", "max", "last"]
_AGG_COLUMNS: dict[str, str] = {"avg": "avg", "min": "min", "max": "max", "last": "last"}
_NAN = math.nan


# Series that appear in the first frames existed before the agent started; later ones
# were created while it watched (see ``births``).
_WARMUP_FRAMES = 3
# A series absent from this many frames in a row is stale (see ``latest``): 1, as
# Prometheus marks a series stale as soon as it is missing from one scrape. A health
# status whose ``action`` label changes is a new series; the old one must end at once.
_STALE_FRAMES = 1


@dataclass(frozen=True)
class SeriesPoints:
    name: str
    labels: dict[str, str]
    points: list[tuple[float, float]]


def _matches(labels: Iterable[tuple[str, str]], matchers: Mapping[str, str]) -> bool:
    if not matchers:
        return True
    d = dict(labels)
    return all(d.get(k) == v for k, v in matchers.items())


class MetricHistory:
    """Recent raw samples in memory plus a downsampled history in the store."""

    def __init__(
        self,
        store: Store | None,
        capacity: int,
        resolution: float,
        retention: float,
        exclude: Iterable[str] = (),
    ) -> None:
        if capacity < 2:
            raise ValueError("history capacity must be at least 2 samples")
        self._store = store
        self._cap = capacity
        self._resolution = resolution
        self._retention = retention
        self._exclude = frozenset(exclude)
        self._lock = threading.Lock()
        self._times = array("d", [_NAN]) * capacity
        self._series: dict[SeriesKey, array[float]] = {}
        self._by_name: dict[str, list[SeriesKey]] = {}  # for queries by metric name
        self._last_frame: dict[SeriesKey, int] = {}
        self._born: dict[SeriesKey, float] = {}  # series first seen after the warm-up
        self._order: tuple[int, list[int], list[float]] = (-1, [], [])  # slots by time
        self._frames = 0  # frames recorded so far; the next goes to slot frames % cap
        # step aggregation for the store: key -> [sum, count, min, max, last]
        self._step_start: float | None = None
        self._acc: dict[SeriesKey, list[float]] = {}
        self._series_ids: dict[SeriesKey, int] = {}

    # -- recording ----------------------------------------------------------------------

    def record(self, ts: float, families: Iterable[Metric]) -> None:
        """Add one collection frame taken at wall-clock time ``ts``."""
        flush: tuple[float, dict[SeriesKey, list[float]]] | None = None
        with self._lock:
            slot = self._frames % self._cap
            frame = self._frames
            self._times[slot] = ts
            series = self._series
            last = self._last_frame
            cap = self._cap
            if self._store is not None:
                step = math.floor(ts / self._resolution) * self._resolution
                if self._step_start is None:
                    self._step_start = step
                elif step != self._step_start:
                    flush = (self._step_start, self._acc)
                    self._acc = {}
                    self._step_start = step
            acc = self._acc if self._store is not None else None
            exclude = self._exclude
            for fam in families:
                for s in fam.samples:
                    key: SeriesKey = (s.name, tuple(s.labels.items()))
                    v = float(s.value)
                    ring = series.get(key)
                    if ring is None:
                        ring = array("d", [_NAN]) * cap
                        series[key] = ring
                        self._by_name.setdefault(s.name, []).append(key)
                        if frame >= _WARMUP_FRAMES:
                            self._born[key] = ts
                    ring[slot] = v
                    last[key] = frame
                    if acc is None or s.name in exclude or v != v:  # v != v: NaN
                        continue
                    a = acc.get(key)
                    if a is None:
                        acc[key] = [v, 1.0, v, v, v]
                    else:
                        a[0] += v
                        a[1] += 1.0
                        if v < a[2]:
                            a[2] = v
                        if v > a[3]:
                            a[3] = v
                        a[4] = v
            # series absent from this frame: clear their slot; forget long-gone ones
            if len(last) != 0:
                for key, seen in list(last.items()):
                    if seen != frame:
                        if frame - seen >= cap:
                            del series[key]
                            del last[key]
                            self._born.pop(key, None)
                            self._by_name[key[0]].remove(key)
                        else:
                            series[key][slot] = _NAN
            self._frames += 1
        if flush is not None:
            self._write_step(*flush)

    def flush(self) -> None:
        """Write the step in progress (at shutdown), even though it is incomplete."""
        with self._lock:
            if self._store is None or self._step_start is None or not self._acc:
                return
            pending = (self._step_start, self._acc)
            self._acc = {}
        self._write_step(*pending)

    def _write_step(self, step: float, acc: dict[SeriesKey, list[float]]) -> None:
        assert self._store is not None
        with self._store.transaction() as db:
            rows = []
            for key, (total, count, lo, hi, last) in acc.items():
                sid = self._series_ids.get(key)
                if sid is None:
                    labels = json.dumps(dict(key[1]), sort_keys=True, separators=(",", ":"))
                    db.execute(
                        "INSERT OR IGNORE INTO metric_series(name, labels) VALUES (?, ?)",
                        (key[0], labels),
                    )
                    sid = db.execute(
                        "SELECT id FROM metric_series WHERE name = ? AND labels = ?",
                        (key[0], labels),
                    ).fetchone()[0]
                    self._series_ids[key] = sid
                rows.append((sid, step, total / count, lo, hi, last, int(count)))
            # REPLACE: a step flushed at shutdown and resumed after a restart is overwritten
            # by the later, more complete one instead of failing on the primary key.
            db.executemany("INSERT OR REPLACE INTO metric_history VALUES (?,?,?,?,?,?,?)", rows)
            db.execute("DELETE FROM metric_history WHERE ts < ?", (step - self._retention,))

    # -- queries ------------------------------------------------------------------------

    def oldest_in_memory(self) -> float | None:
        with self._lock:
            if self._frames == 0:
                return None
            first = 0 if self._frames <= self._cap else self._frames % self._cap
            return self._times[first]

    def names(self) -> list[str]:
        with self._lock:
            return sorted({k[0] for k in self._series})

    def recent(
        self, name: str, matchers: Mapping[str, str], start: float, end: float
    ) -> list[SeriesPoints]:
        """Raw samples of ``name`` within [start, end] from memory, oldest first."""
        with self._lock:
            n = min(self._frames, self._cap)
            first = 0 if self._frames <= self._cap else self._frames % self._cap
            slots = [(first + i) % self._cap for i in range(n)]
            wanted = [i for i in slots if start <= self._times[i] <= end]
            out = []
            for (sname, labels), ring in self._series.items():
                if sname != name or not _matches(labels, matchers):
                    continue
                pts = [(self._times[i], ring[i]) for i in wanted if ring[i] == ring[i]]
                if pts:
                    out.append(SeriesPoints(sname, dict(labels), pts))
        return out

    def stored(
        self,
        name: str,
        matchers: Mapping[str, str],
        start: float,
        end: float,
        agg: Aggregate = "avg",
    ) -> list[SeriesPoints]:
        """Downsampled steps of ``name`` within [start, end] from SQLite, oldest first."""
        if self._store is None:
            return []
        column = _AGG_COLUMNS[agg]
        rows = self._store.query(
            f"SELECT s.labels, h.ts, h.{column} FROM metric_history h "
            "JOIN metric_series s ON s.id = h.series_id "
            "WHERE s.name = ? AND h.ts >= ? AND h.ts <= ? ORDER BY s.labels, h.ts",
            (name, start, end),
        )
        grouped: dict[str, list[tuple[float, float]]] = {}
        for labels, ts, v in rows:
            grouped.setdefault(labels, []).append((ts, v))
        out = []
        for labels_json, pts in grouped.items():
            labels = json.loads(labels_json)
            if _matches(labels.items(), matchers):
                out.append(SeriesPoints(name, labels, pts))
        return out

    def query(
        self,
        name: str,
        matchers: Mapping[str, str],
        start: float,
        end: float,
        source: Literal["auto", "memory", "store"] = "auto",
        agg: Aggregate = "avg",
    ) -> tuple[str, list[SeriesPoints]]:
        """Points of ``name`` in [start, end]; ``auto`` joins stored steps older than the
        in-memory window to the raw samples inside it. Returns (source used, series)."""
        if source == "memory":
            return "memory", self.recent(name, matchers, start, end)
        if source == "store":
            return "store", self.stored(name, matchers, start, end, agg)
        oldest = self.oldest_in_memory()
        if oldest is not None and start >= oldest:
            return "memory", self.recent(name, matchers, start, end)
        cut = oldest if oldest is not None else end
        merged: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for s in self.stored(name, matchers, start, min(end, cut), agg):
            # a step that starts before the window may overlap it; keep it, it is older
            merged[tuple(sorted(s.labels.items()))] = [p for p in s.points if p[0] < cut]
        if oldest is not None:
            for s in self.recent(name, matchers, max(start, oldest), end):
                merged.setdefault(tuple(sorted(s.labels.items())), []).extend(s.points)
        series = [SeriesPoints(name, dict(k), pts) for k, pts in merged.items() if pts]
        return "store+memory", series

    def _window(self, start: float, end: float) -> tuple[list[int], list[float]]:
        """Ring slots (and their times) inside [start, end], oldest first. The slot order
        is computed once per frame; the window is found by bisection. Caller holds the lock."""
        if self._order[0] != self._frames:
            n = min(self._frames, self._cap)
            first = 0 if self._frames <= self._cap else self._frames % self._cap
            slots = [(first + i) % self._cap for i in range(n)]
            self._order = (self._frames, slots, [self._times[i] for i in slots])
        _, slots, times = self._order
        lo, hi = bisect.bisect_left(times, start), bisect.bisect_right(times, end)
        return slots[lo:hi], times[lo:hi]

    def series(
        self, name: str, start: float, end: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """Every in-memory series of ``name`` with its raw points in [start, end], oldest
        first, as (labels, points); the PromQL ``SeriesSource`` of the alert evaluator."""
        with self._lock:
            slots, times = self._window(start, end)
            out = []
            for key in self._by_name.get(name, ()):
                ring = self._series[key]
                pts = [(t, ring[i]) for i, t in zip(slots, times, strict=True)
                       if ring[i] == ring[i]]
                if pts:
                    out.append((dict(key[1]), pts))
        return out

    def births(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """When each series of ``name`` that appeared after the first few frames (a
        collector may need a couple of rounds to report everything) was first seen
        (``promql.SeriesBirths``: a new counter counts from 0)."""
        with self._lock:
            return {key[1]: self._born[key] for key in self._by_name.get(name, ())
                    if key in self._born}

    def latest(
        self, name: str, start: float, end: float
    ) -> list[tuple[dict[str, str], tuple[float, float]]]:
        """The newest point in [start, end] of every series of ``name``: an instant
        selector's lookback without copying the whole window.

        Staleness, as Prometheus marks series that vanish from a scrape: a series missing
        from the last ``_STALE_FRAMES`` frames up to ``end`` has no value."""
        with self._lock:
            slots, times = self._window(start, end)
            out = []
            oldest = max(-1, len(slots) - 1 - _STALE_FRAMES)
            for key in self._by_name.get(name, ()):
                ring = self._series[key]
                for j in range(len(slots) - 1, oldest, -1):
                    v = ring[slots[j]]
                    if v == v:
                        out.append((dict(key[1]), (times[j], v)))
                        break
        return out
