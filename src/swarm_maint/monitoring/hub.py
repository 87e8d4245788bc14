"""The metrics hub: runs the collectors on a fixed interval and keeps the latest frame.

Collection happens once per interval on the hub's own thread, whatever the scrape rate;
``/metrics`` serves the exposition text rendered once per frame and cached, so a scrape
costs a lookup, not a collection. Each frame also goes to the history.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import __version__
from ..clock import Clock, SystemClock
from .collector import Collector, CollectorStatus
from .history import MetricHistory

__all__ = ["Frame", "MetricsHub"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One collection: when it was taken and every family it produced."""

    timestamp: float
    families: tuple[Metric, ...]
    generation: int
    statuses: dict[str, CollectorStatus] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)


class _FrameRegistry:
    """Adapts the latest frame to prometheus_client's registry/exposition machinery."""

    def __init__(self, hub: MetricsHub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        yield from self._hub.latest().families


class MetricsHub:
    """Owns the collectors; thread-safe readers get immutable frames."""

    def __init__(
        self,
        collectors: Sequence[Collector],
        interval: float,
        node_name: str,
        history: MetricHistory | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.collectors = list(collectors)
        self.interval = interval
        self.node_name = node_name
        self.history = history
        self._clock = clock or SystemClock()
        self._frame = Frame(0.0, (), 0)
        self._frames_total = 0
        self._errors_total: dict[str, int] = {c.name: 0 for c in self.collectors}
        self._render_lock = threading.Lock()
        self._rendered: tuple[int, bytes] = (-1, b"")
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_FrameRegistry(self))
        # called with every new frame, on the collection thread (alert evaluation)
        self.on_frame: list[Callable[[Frame], None]] = []
        self._wake = threading.Event()
        # collectors keep rate state between calls: one collection at a time
        self._collect_lock = threading.Lock()
        self._started = self._clock.time()

    # -- collection ---------------------------------------------------------------------

    def collect_once(self) -> Frame:
        """Run every collector now and publish the frame (safe from any thread)."""
        with self._collect_lock:
            return self._collect_locked()

    def _collect_locked(self) -> Frame:
        families: list[Metric] = []
        statuses: dict[str, CollectorStatus] = {}
        durations: dict[str, float] = {}
        for c in self.collectors:
            t0 = time.perf_counter()
            try:
                families.extend(c.collect())
                statuses[c.name] = c.status()
            except Exception as exc:  # a broken collector must not stop the others
                self._errors_total[c.name] += 1
                statuses[c.name] = CollectorStatus("error", f"{type(exc).__name__}: {exc}")
                log.warning("collector %s failed: %s", c.name, exc, exc_info=True)
            durations[c.name] = time.perf_counter() - t0
        ts = self._clock.time()
        families.extend(self._own_metrics(ts, statuses, durations))
        frame = Frame(ts, tuple(families), self._frame.generation + 1, statuses, durations)
        self._frame = frame
        self._frames_total += 1
        if self.history is not None:
            try:
                self.history.record(ts, frame.families)
            except Exception:  # the store may be full or locked; keep monitoring
                log.exception("cannot record metric history")
        for hook in self.on_frame:
            try:
                hook(frame)
            except Exception:  # a failing consumer must not stop collection
                log.exception("frame consumer failed")
        return frame

    def _own_metrics(
        self, ts: float, statuses: dict[str, CollectorStatus], durations: dict[str, float]
    ) -> list[Metric]:
        dur = GaugeMetricFamily(
            "swarm_collector_duration_seconds",
            "Time the collector took in the last collection.",
            labels=["collector"],
        )
        ok = GaugeMetricFamily(
            "swarm_collector_up",
            "1 when the collector read everything in the last collection, 0 otherwise.",
            labels=["collector"],
        )
        errs = CounterMetricFamily(
            "swarm_collector_errors_total",
            "Collections in which the collector raised an unexpected error.",
            labels=["collector"],
        )
        for name, seconds in durations.items():
            dur.add_metric([name], seconds)
            ok.add_metric([name], 1.0 if statuses[name].state == "ok" else 0.0)
            errs.add_metric([name], self._errors_total.get(name, 0))
        info = GaugeMetricFamily(
            "swarm_agent_info",
            "Constant 1, labelled with the agent version and node name.",
            labels=["version", "node"],
        )
        info.add_metric([__version__, self.node_name], 1.0)
        stamp = GaugeMetricFamily(
            "swarm_collection_timestamp_seconds",
            "Unix time of the last collection.",
            value=ts,
        )
        frames = CounterMetricFamily(
            "swarm_collections_total", "Collections run since the agent started.",
            value=self._frames_total + 1,
        )
        return [dur, ok, errs, info, stamp, frames]

    def run(self, stop: threading.Event) -> None:
        """Collect every ``interval`` seconds until ``stop`` is set (drift-free schedule)."""
        next_at = self._clock.monotonic()
        while not stop.is_set():
            self.collect_once()
            next_at += self.interval
            now = self._clock.monotonic()
            if now > next_at:  # we fell behind (a slow collector): skip missed ticks
                next_at = now
            # wake early for stop() or an on-demand collection (request_collection)
            if self._wake.wait(max(0.0, next_at - now)):
                self._wake.clear()
                next_at = self._clock.monotonic()
            if stop.is_set():
                break

    def request_collection(self) -> None:
        """Make the collection thread collect now instead of at its next tick."""
        self._wake.set()

    def close(self) -> None:
        for c in self.collectors:
            try:
                c.close()
            except Exception:
                log.exception("collector %s failed to close", c.name)
        if self.history is not None:
            self.history.flush()

    # -- readers ------------------------------------------------------------------------

    def latest(self) -> Frame:
        return self._frame

    def exposition(self) -> bytes:
        """The Prometheus text format of the latest frame, rendered once per frame."""
        frame = self._frame
        with self._render_lock:
            if self._rendered[0] != frame.generation:
                self._rendered = (frame.generation, generate_latest(self._registry))
            return self._rendered[1]

    def uptime(self) -> float:
        return self._clock.time() - self._started
