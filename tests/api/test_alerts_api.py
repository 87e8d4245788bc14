"""Alerting over HTTP: alerts with delivery state, silences, maintenance, test sends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from swarm_maint.alerts.service import build_alerts
from swarm_maint.api.app import ApiContext, create_app
from swarm_maint.config import config_from_dict
from swarm_maint.monitoring.collector import CollectorContext
from swarm_maint.monitoring.collectors.load import LoadCollector
from swarm_maint.monitoring.history import MetricHistory
from swarm_maint.monitoring.hub import MetricsHub
from swarm_maint.store import Store
from tests.alerts.test_outbox import Receiver
from tests.fake_clock import FakeClock
from tests.live_server import serve

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[httpx.Client, Receiver, FakeClock]]:
    hook = Receiver()
    clock = FakeClock()
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "loadavg").write_text("0.50 0.25 0.10 2/345 6789\n")
    cfg = config_from_dict({
        "agent": {"node_name": "node-x"},
        "monitoring": {"proc_root": str(proc)},
        "alerts": {"receivers": [{"name": "ops", "url": hook.url},
                                 {"name": "dead", "url": "http://127.0.0.1:9/x",
                                  "timeout": "1s"}]},
    })
    store = Store(tmp_path / "s.db")
    history = MetricHistory(store, 60, 60, 3600)
    hub = MetricsHub([LoadCollector(CollectorContext(cfg.monitoring, clock))], 1.0, "node-x",
                     history, clock)
    alerts = build_alerts(cfg, history, store, clock)
    hub.on_frame.append(lambda frame: alerts.evaluate(frame.timestamp))
    hub.collect_once()
    ctx = ApiContext(hub, TOKEN, clock, alerts=alerts)
    with serve(create_app(ctx)) as url, httpx.Client(base_url=url) as c:
        yield c, hook, clock
    hook.close()


def test_alerts_show_delivery_state_per_receiver(
    api: tuple[httpx.Client, Receiver, FakeClock],
) -> None:
    c, _, _ = api
    data = c.get("/api/v1/alerts").json()
    assert data["enabled"] is True
    [watchdog] = [a for a in data["alerts"] if a["alertname"] == "Watchdog"]
    assert watchdog["labels"]["node"] == "node-x"
    states = {d["receiver"]: d["state"] for d in watchdog["deliveries"]}
    assert states == {"ops": "queued", "dead": "queued"}  # nothing delivered yet
    assert {row["receiver"] for row in data["outbox"]} == {"ops", "dead"}


def test_silences_need_the_token_and_validate_input(
    api: tuple[httpx.Client, Receiver, FakeClock],
) -> None:
    c, _, clock = api
    body = {"matchers": ['alertname="Watchdog"'], "duration": "2h", "comment": "quiet"}
    assert c.post("/api/v1/silences", json=body).status_code == 401
    r = c.post("/api/v1/silences", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["state"] == "active" and s["ends"] == pytest.approx(clock.now + 7200)
    assert [x["id"] for x in c.get("/api/v1/silences").json()["silences"]] == [s["id"]]
    for bad, problem in [
        ({**body, "matchers": ["alertname~x"]}, "expected =, !=, =~ or !~"),
        ({**body, "duration": "soon"}, "duration"),
        ({**body, "matchers": []}, "matchers"),
        ({**body, "comment": ""}, "comment"),
    ]:
        r = c.post("/api/v1/silences", json=bad, headers=AUTH)
        assert r.status_code == 400 and problem in r.json()["error"], r.text
    assert c.delete(f"/api/v1/silences/{s['id']}").status_code == 401
    r = c.delete(f"/api/v1/silences/{s['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "expired"
    assert c.get("/api/v1/silences").json()["silences"] == []
    assert len(c.get("/api/v1/silences?all=true").json()["silences"]) == 1
    r = c.delete("/api/v1/silences/nope", headers=AUTH)
    assert r.status_code == 404 and "no silence" in r.json()["error"]


def test_maintenance_windows(api: tuple[httpx.Client, Receiver, FakeClock]) -> None:
    c, _, clock = api
    body = {"reason": "driver update", "max_duration": "30m"}
    assert c.post("/api/v1/maintenance", json=body).status_code == 401
    r = c.post("/api/v1/maintenance", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    w = r.json()
    assert w["holding"] is True and w["deadline"] == pytest.approx(clock.now + 1800)
    assert [x["id"] for x in c.get("/api/v1/maintenance").json()["windows"]] == [w["id"]]
    r = c.delete(f"/api/v1/maintenance/{w['id']}", headers=AUTH)
    assert r.json()["ended"] == pytest.approx(clock.now)
    assert r.json()["holding"] is True  # the grace period runs
    clock.advance(121)
    assert c.get("/api/v1/maintenance").json()["windows"] == []
    r = c.post("/api/v1/maintenance", json={**body, "matchers": ["a=~("]}, headers=AUTH)
    assert r.status_code == 400 and "bad regular expression" in r.json()["error"]


def test_test_notification(api: tuple[httpx.Client, Receiver, FakeClock]) -> None:
    c, hook, _ = api
    assert c.post("/api/v1/alerts/test", json={"receiver": "ops"}).status_code == 401
    r = c.post("/api/v1/alerts/test", json={"receiver": "ops"}, headers=AUTH)
    assert r.json()["delivered"] is True
    [alert] = hook.alerts()
    assert alert["labels"] == {"alertname": "SwarmMaintTest", "severity": "none",
                               "node": "node-x"}
    r = c.post("/api/v1/alerts/test", json={"receiver": "dead"}, headers=AUTH)
    assert r.json()["delivered"] is False and "127.0.0.1:9" in r.json()["error"]
    r = c.post("/api/v1/alerts/test", json={"receiver": "nope"}, headers=AUTH)
    assert r.status_code == 400 and "no receiver named 'nope'" in r.json()["error"]


def test_the_token_is_checked_before_the_body_is_read(
    api: tuple[httpx.Client, Receiver, FakeClock],
) -> None:
    """FastAPI parses a body before route dependencies run: without this guard a client
    with no token could make the agent parse any amount of JSON."""
    c, _, _ = api
    assert c.post("/api/v1/silences", content=b"{bad").status_code == 401  # not 400
    big = b'{"matchers": [' + b"{}," * 40_000 + b'{}], "duration": "1h", "comment": "x"}'
    assert c.post("/api/v1/silences", content=big).status_code == 401
    r = c.post("/api/v1/silences", content=big, headers=AUTH)
    assert r.status_code == 413 and "larger than" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(100):
            yield b" " * 4096

    r = c.post("/api/v1/silences", content=chunks(), headers=AUTH)
    assert r.status_code == 413


def test_misspelt_fields_and_unknown_routes_are_errors_in_the_documented_shape(
    api: tuple[httpx.Client, Receiver, FakeClock],
) -> None:
    c, _, _ = api
    r = c.post("/api/v1/maintenance", headers=AUTH,
               json={"reason": "typo", "max_duraton": "5m", "matcher": ["alertname=Foo"]})
    assert r.status_code == 400 and "max_duraton" in r.json()["error"]
    assert c.get("/api/v1/maintenance").json()["windows"] == []
    for method, path, code in (("GET", "/api/v1/nothing", 404), ("PUT", "/api/v1/status", 405),
                               ("GET", "/openapi.json", 404), ("GET", "/api/v1/status/", 404)):
        r = c.request(method, path, headers=AUTH)
        assert r.status_code == code and "location" not in r.headers, (path, r.text)
        assert set(r.json()) == {"error"}
