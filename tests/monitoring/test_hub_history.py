"""The hub (collection, exposition cache, own metrics) and the metric history."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric

from swarm_maint.config import MonitoringConfig
from swarm_maint.monitoring.collector import CollectorContext, CollectorStatus
from swarm_maint.monitoring.collectors.load import LoadCollector
from swarm_maint.monitoring.history import MetricHistory
from swarm_maint.monitoring.hub import MetricsHub
from swarm_maint.store import Store
from tests.fake_clock import FakeClock


class ScriptedCollector:
    """A plugin whose readings the test sets (value per device label)."""

    name = "scripted"

    def __init__(self) -> None:
        self.values: dict[str, float] = {"a": 1.0}
        self.fail = False
        self.closed = False

    def collect(self) -> list[Metric]:
        if self.fail:
            raise RuntimeError("sensor on fire")
        g = GaugeMetricFamily("test_value", "A scripted value.", labels=["device"])
        for dev, v in self.values.items():
            g.add_metric([dev], v)
        return [g]

    def status(self) -> CollectorStatus:
        return CollectorStatus()

    def close(self) -> None:
        self.closed = True


def make_hub(tmp_path: Path, clock: FakeClock, capacity: int = 5, resolution: float = 60.0,
             retention: float = 3600.0) -> tuple[MetricsHub, ScriptedCollector, Store]:
    store = Store(tmp_path / "state.db")
    hist = MetricHistory(store, capacity=capacity, resolution=resolution, retention=retention)
    col = ScriptedCollector()
    return MetricsHub([col], 1.0, "node-a", hist, clock), col, store


def test_exposition_is_cached_per_frame_and_has_own_metrics(tmp_path: Path) -> None:
    clock = FakeClock()
    hub, col, _ = make_hub(tmp_path, clock)
    hub.collect_once()
    text = hub.exposition()
    assert hub.exposition() is text  # a second scrape of the same frame renders nothing
    body = text.decode()
    assert 'test_value{device="a"} 1.0' in body
    assert 'swarm_collector_up{collector="scripted"} 1.0' in body
    assert 'swarm_agent_info{node="node-a",version="0.1.0"} 1.0' in body
    assert "# TYPE swarm_collector_errors_total counter" in body
    col.values = {"a": 2.0}
    hub.collect_once()
    assert 'test_value{device="a"} 2.0' in hub.exposition().decode()


@pytest.mark.expect_logged_errors
def test_failing_collector_is_reported_not_raised(tmp_path: Path) -> None:
    clock = FakeClock()
    store = Store(tmp_path / "s.db")
    broken = ScriptedCollector()
    broken.name = "broken"
    broken.fail = True
    load = LoadCollector(CollectorContext(MonitoringConfig(), clock))
    hub = MetricsHub([broken, load], 1.0, "n", MetricHistory(store, 5, 60, 3600), clock)
    frame = hub.collect_once()
    assert frame.statuses["broken"].state == "error"
    assert "sensor on fire" in frame.statuses["broken"].message
    body = hub.exposition().decode()
    assert 'swarm_collector_errors_total{collector="broken"} 1.0' in body
    assert 'swarm_collector_up{collector="broken"} 0.0' in body
    assert "swarm_load1 " in body  # the other collector still delivered


def test_memory_history_ring(tmp_path: Path) -> None:
    clock = FakeClock()
    hub, col, _ = make_hub(tmp_path, clock, capacity=3)
    assert hub.history is not None
    t0 = clock.time()
    for i in range(5):
        col.values = {"a": float(i)}
        if i == 2:
            col.values["b"] = 10.0
        hub.collect_once()
        clock.advance(1)
    got = hub.history.recent("test_value", {"device": "a"}, 0, math.inf)
    assert len(got) == 1
    # capacity 3: only the last three frames are kept
    assert got[0].points == [(t0 + 2, 2.0), (t0 + 3, 3.0), (t0 + 4, 4.0)]
    assert hub.history.oldest_in_memory() == t0 + 2
    b = hub.history.recent("test_value", {"device": "b"}, 0, math.inf)
    assert b[0].points == [(t0 + 2, 10.0)]  # absent in later frames: no point, not a stale one
    window = hub.history.recent("test_value", {"device": "a"}, t0 + 3, t0 + 3)
    assert window[0].points == [(t0 + 3, 3.0)]


def test_series_gone_for_a_whole_window_is_forgotten(tmp_path: Path) -> None:
    clock = FakeClock()
    hub, col, _ = make_hub(tmp_path, clock, capacity=3)
    assert hub.history is not None
    col.values = {"a": 1.0, "gone": 5.0}
    hub.collect_once()
    col.values = {"a": 1.0}
    for _ in range(3):
        clock.advance(1)
        hub.collect_once()
    assert hub.history.recent("test_value", {"device": "gone"}, 0, math.inf) == []


def test_downsampled_steps_in_sqlite(tmp_path: Path) -> None:
    clock = FakeClock(start=1_800_000_000.0)  # a multiple of 60: steps start at t0
    hub, col, store = make_hub(tmp_path, clock, capacity=10, resolution=60, retention=180)
    assert hub.history is not None
    t0 = clock.time()
    for i in range(60):  # step 1: values 0..59
        col.values = {"a": float(i)}
        hub.collect_once()
        clock.advance(1)
    for i in range(30):  # step 2 in progress: values 100..129
        col.values = {"a": 100.0 + i}
        hub.collect_once()
        clock.advance(1)
    stored = hub.history.stored("test_value", {"device": "a"}, 0, math.inf, "avg")
    assert stored[0].points == [(t0, pytest.approx(29.5))]
    assert hub.history.stored("test_value", {}, 0, math.inf, "max")[0].points == [(t0, 59.0)]
    assert hub.history.stored("test_value", {}, 0, math.inf, "min")[0].points == [(t0, 0.0)]
    assert hub.history.stored("test_value", {}, 0, math.inf, "last")[0].points == [(t0, 59.0)]
    # closing flushes the incomplete step
    hub.close()
    avg = hub.history.stored("test_value", {}, 0, math.inf, "avg")[0].points
    assert avg == [(t0, pytest.approx(29.5)), (t0 + 60, pytest.approx(114.5))]
    count = store.query(
        "SELECT h.count FROM metric_history h JOIN metric_series s ON s.id = h.series_id "
        "WHERE s.name = 'test_value' ORDER BY h.ts"
    )
    assert [c for (c,) in count] == [60, 30]


def test_retention_deletes_old_steps(tmp_path: Path) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    hub, _col, store = make_hub(tmp_path, clock, capacity=5, resolution=60, retention=120)
    for _ in range(6):  # six steps of one sample each
        hub.collect_once()
        clock.advance(60)
    hub.collect_once()
    ts = [t for (t,) in store.query("SELECT DISTINCT ts FROM metric_history ORDER BY ts")]
    assert ts[0] >= clock.time() - 60 - 120 - 60  # nothing older than retention + a step
    assert len(ts) <= 3


def test_excluded_names_stay_in_memory_only(tmp_path: Path) -> None:
    clock = FakeClock()
    store = Store(tmp_path / "s.db")
    hist = MetricHistory(store, 5, 1.0, 3600, exclude=["test_value"])
    hub = MetricsHub([ScriptedCollector()], 1.0, "n", hist, clock)
    for _ in range(3):
        hub.collect_once()
        clock.advance(1)
    hub.close()
    assert hist.recent("test_value", {}, 0, math.inf)
    assert hist.stored("test_value", {}, 0, math.inf) == []
    assert hist.stored("swarm_collector_up", {}, 0, math.inf)  # others are stored


def test_auto_query_joins_store_and_memory(tmp_path: Path) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    hub, col, _ = make_hub(tmp_path, clock, capacity=5, resolution=10)
    assert hub.history is not None
    for i in range(30):
        col.values = {"a": float(i)}
        hub.collect_once()
        clock.advance(1)
    src, series = hub.history.query("test_value", {}, clock.time() - 100, clock.time())
    assert src == "store+memory"
    pts = series[0].points
    assert [p[0] for p in pts] == sorted(p[0] for p in pts)
    assert pts[-1][1] == 29.0  # raw newest sample from memory
    assert pts[0] == (1_800_000_000.0, pytest.approx(4.5))  # first 10 s step from the store
    src, series = hub.history.query("test_value", {}, clock.time() - 3, clock.time())
    assert src == "memory"
    assert len(series[0].points) == 3


def test_run_loop_stops_promptly(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    hub = MetricsHub([ScriptedCollector()], 3600.0, "n", MetricHistory(store, 5, 60, 60))
    stop = threading.Event()
    t = threading.Thread(target=hub.run, args=(stop,))
    t.start()
    time.sleep(0.2)
    assert hub.latest().generation == 1
    hub.request_collection()  # on-demand collection wakes the loop early
    deadline = time.monotonic() + 2
    while hub.latest().generation < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hub.latest().generation == 2
    t0 = time.monotonic()
    stop.set()
    hub.request_collection()
    t.join(2)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 1.0
