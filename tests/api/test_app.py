"""The HTTP API, in process, over the real hub and a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from swarm_maint.api.app import ApiContext, create_app
from swarm_maint.config import MonitoringConfig
from swarm_maint.monitoring.collector import CollectorContext
from swarm_maint.monitoring.collectors.load import LoadCollector
from swarm_maint.monitoring.history import MetricHistory
from swarm_maint.monitoring.hub import MetricsHub
from swarm_maint.store import Store
from tests.fake_clock import FakeClock
from tests.live_server import serve

TOKEN = "s3cret-token"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[httpx.Client, MetricsHub, FakeClock]]:
    clock = FakeClock()
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "loadavg").write_text("0.50 0.25 0.10 2/345 6789\n")
    ctx = CollectorContext(MonitoringConfig(proc_root=str(proc)), clock)
    hub = MetricsHub(
        [LoadCollector(ctx)], 1.0, "node-x",
        MetricHistory(Store(tmp_path / "s.db"), 60, 60, 3600), clock,
    )
    for _ in range(3):
        hub.collect_once()
        clock.advance(1)
    with serve(create_app(ApiContext(hub, TOKEN, clock))) as url, httpx.Client(base_url=url) as c:
        yield c, hub, clock


def test_metrics(client: tuple[httpx.Client, MetricsHub, FakeClock]) -> None:
    c, _, _ = client
    r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# HELP swarm_load1 " in r.text
    assert "swarm_load1 0.5" in r.text
    assert "swarm_procs_existing 345.0" in r.text


def test_status(client: tuple[httpx.Client, MetricsHub, FakeClock]) -> None:
    c, _, _ = client
    data = c.get("/api/v1/status").json()
    assert data["node"] == "node-x"
    assert data["cpu"]["load1"] == 0.5
    assert data["gpu"]["state"] == "disabled"
    assert data["collectors"] == [
        {"name": "load", "state": "ok", "message": "", "duration_seconds": pytest.approx(0, abs=1)}
    ]


def test_history_from_memory(client: tuple[httpx.Client, MetricsHub, FakeClock]) -> None:
    c, _, clock = client
    r = c.get("/api/v1/metrics/history", params={"name": "swarm_load5", "start": "3s"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "memory"
    assert body["series"] == [
        {"labels": {}, "points": [[clock.now - 3, 0.25], [clock.now - 2, 0.25],
                                  [clock.now - 1, 0.25]]}
    ]
    r = c.get("/api/v1/metrics/history",
              params={"name": "swarm_collector_up", "match": "collector=load", "start": "5s"})
    assert r.json()["series"][0]["labels"] == {"collector": "load"}
    r = c.get("/api/v1/metrics/history",
              params={"name": "swarm_collector_up", "match": "collector=nope", "start": "5s"})
    assert r.json()["series"] == []
    names = c.get("/api/v1/metrics/names").json()["names"]
    assert "swarm_load1" in names


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({}, "name"),
        ({"name": "x", "match": "novalue"}, "label=value"),
        ({"name": "x", "start": "yesterday"}, "invalid time"),
        ({"name": "x", "start": "100", "end": "50"}, "start is after end"),
        ({"name": "x", "source": "disk"}, "source"),
        ({"name": "x", "agg": "median"}, "agg"),
        ({"name": "x", "start": "nan"}, "invalid time"),
    ],
)
def test_history_bad_input(
    client: tuple[httpx.Client, MetricsHub, FakeClock], params: dict[str, str], problem: str
) -> None:
    c, _, _ = client
    r = c.get("/api/v1/metrics/history", params=params)
    assert r.status_code == 400
    assert problem in r.json()["error"]


def test_mutating_endpoint_needs_token(client: tuple[httpx.Client, MetricsHub, FakeClock]) -> None:
    c, hub, _ = client
    before = hub.latest().generation
    assert c.post("/api/v1/collect").status_code == 401
    r = c.post("/api/v1/collect", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert c.post("/api/v1/collect", headers={"Authorization": TOKEN}).status_code == 401
    assert hub.latest().generation == before  # nothing happened
    r = c.post("/api/v1/collect", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.json()["generation"] == before + 1
