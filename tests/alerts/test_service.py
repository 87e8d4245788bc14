"""Routing, repeats, silences, maintenance and restarts of the alert service, over a real
SQLite state file, a real MetricHistory and a fake clock; receivers record what they get."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric

from swarm_maint.alerts.engine import AlertEngine
from swarm_maint.alerts.maintenance import Maintenance
from swarm_maint.alerts.matchers import parse_matchers
from swarm_maint.alerts.notifiers import Batch, NotifyError
from swarm_maint.alerts.outbox import Outbox
from swarm_maint.alerts.routing import Route, Router
from swarm_maint.alerts.service import AlertService, stored_alerts
from swarm_maint.alerts.silences import Silences
from swarm_maint.errors import UsageError
from swarm_maint.monitoring.history import MetricHistory
from swarm_maint.store import Store
from tests.alerts.test_engine import rule
from tests.fake_clock import FakeClock

TEMP = "swarm_gpu_temperature_celsius"
HOT = f"{TEMP} > 90"


class Recorder:
    def __init__(self, name: str, resend_interval: float | None = None) -> None:
        self.name = name
        self.batches: list[Batch] = []
        self.down = False
        if resend_interval is not None:
            self.resend_interval = resend_interval

    def send(self, batch: Batch) -> None:
        if self.down:
            raise NotifyError(f"{self.name} is down")
        self.batches.append(batch)

    def events(self) -> list[tuple[str, str]]:
        """(status, gpu) of every alert received, in order."""
        return [(a["status"], a["labels"].get("gpu", "")) for b in self.batches
                for a in b.alerts]


class Rig:
    def __init__(self, tmp_path: Path, *, routes: list[Route] | None = None,
                 receivers: tuple[str, ...] = ("ops",), repeat: float = 3600.0,
                 resend: float | None = None, clock: FakeClock | None = None,
                 rules: tuple[Any, ...] | None = None) -> None:
        self.clock = clock or FakeClock()
        self.store = Store(tmp_path / "state.db")
        self.history = MetricHistory(store=None, capacity=5000, resolution=60, retention=3600)
        self.rules = rules or (rule("GpuHot", HOT),)
        self.notifiers = {r: Recorder(r, resend) for r in receivers}
        self.svc = AlertService(
            engine=AlertEngine(self.rules, self.history, self.clock,
                               external_labels={"node": "n1"}),
            outbox=Outbox(self.store, self.clock, max_per_second=100, jitter=0.0),
            notifiers=dict(self.notifiers),  # type: ignore[arg-type]
            router=Router(routes or [], list(receivers), repeat_interval=repeat),
            silences=Silences(self.store, self.clock),
            maintenance=Maintenance(self.store, self.clock, ['alertname="GpuHot"'],
                                    grace=60.0),
            store=self.store, clock=self.clock, node="n1")
        self.svc.restore(self.clock.time())

    def step(self, temps: Mapping[str, float], dt: float = 1.0) -> None:
        """Advance the clock, record one frame, evaluate and deliver what is due."""
        self.clock.advance(dt)
        fam = GaugeMetricFamily(TEMP, "t", labels=["gpu"])
        for g, v in temps.items():
            fam.add_metric([g], v)
        fams: list[Metric] = [fam]
        self.history.record(self.clock.now, fams)
        self.svc.evaluate(self.clock.now)
        self.svc.outbox.deliver_due(self.svc.senders)

    def run(self, temps: Mapping[str, float], seconds: int) -> None:
        for _ in range(seconds):
            self.step(temps)

    def events(self, receiver: str = "ops") -> list[tuple[str, str]]:
        return self.notifiers[receiver].events()


def test_fires_once_then_repeats_after_the_repeat_interval(tmp_path: Path) -> None:
    rig = Rig(tmp_path, repeat=600)
    rig.run({"0": 95}, 599)
    assert rig.events() == [("firing", "0")]
    rig.run({"0": 95}, 2)
    assert rig.events() == [("firing", "0")] * 2
    rig.run({"0": 20}, 1)
    assert rig.events() == [("firing", "0")] * 2 + [("resolved", "0")]
    [alert] = [a for b in rig.notifiers["ops"].batches for a in b.alerts][-1:]
    assert alert["labels"]["node"] == "n1"


def test_no_pile_up_while_the_receiver_is_down(tmp_path: Path) -> None:
    rig = Rig(tmp_path, repeat=10)
    rig.notifiers["ops"].down = True
    rig.run({"0": 95}, 120)  # twelve repeat intervals while down
    pending = rig.svc.outbox.pending()
    assert [p["kind"] for p in pending] == ["firing"]  # one row waits, not twelve
    rig.notifiers["ops"].down = False
    rig.clock.advance(400)  # past the longest backoff so far
    rig.run({"0": 20}, 1)
    assert rig.events() == [("firing", "0"), ("resolved", "0")]


def test_routes_first_match_continue_and_fallback(tmp_path: Path) -> None:
    crit = Route(tuple(parse_matchers(['gpu="0"'])), ("pager",), continue_matching=True)
    ops = Route(tuple(parse_matchers(['alertname=~"Gpu.*"'])), ("ops",))
    rig = Rig(tmp_path, routes=[crit, ops], receivers=("pager", "ops", "rest"))
    rig.run({"0": 95, "1": 95}, 1)
    assert rig.events("pager") == [("firing", "0")]
    assert sorted(rig.events("ops")) == [("firing", "0"), ("firing", "1")]
    assert rig.events("rest") == []  # both matched a route: the fallback is not used
    other = Router([crit], ["pager", "ops", "rest"], default_receivers=["rest"])
    assert [d.receiver for d in other.destinations({"gpu": "7"})] == ["rest"]
    # a route took it (continue_matching finds no other): the defaults are not used
    assert [d.receiver for d in other.destinations({"gpu": "0"})] == ["pager"]


def test_group_wait_batches_a_group_and_keeps_groups_apart(tmp_path: Path) -> None:
    by_gpu = Route((), ("ops",), group_by=("alertname",), group_wait=5.0)
    rig = Rig(tmp_path, routes=[by_gpu])
    rig.step({"0": 95})
    rig.step({"0": 95, "1": 95})
    rig.step({"0": 95, "1": 95, "2": 95})
    assert rig.events() == []  # waiting for the group
    rig.run({"0": 95, "1": 95, "2": 95}, 3)
    [batch] = rig.notifiers["ops"].batches
    assert [a["labels"]["gpu"] for a in batch.alerts] == ["0", "1", "2"]
    assert batch.group_labels == {"alertname": "GpuHot"}
    assert batch.group_key == '{}/{}:{alertname="GpuHot"}'
    # a resolve of a group already notified goes out at once
    rig.step({"0": 20, "1": 95, "2": 95})
    assert rig.events()[-1] == ("resolved", "0")

    per_gpu = Route((), ("ops",), group_by=("gpu",))
    rig2 = Rig(tmp_path / "b", routes=[per_gpu])
    rig2.step({"0": 95, "1": 95})
    assert [len(b.alerts) for b in rig2.notifiers["ops"].batches] == [1, 1]


def test_silence_mutes_then_releases_and_never_swallows_a_resolve(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    silences = rig.svc.silences
    rig.run({"0": 95}, 1)
    assert rig.events() == [("firing", "0")]
    s = silences.add(['alertname="GpuHot"'], 60, "fan swap", "ana")
    rig.run({"0": 95, "1": 95}, 10)
    assert rig.events() == [("firing", "0")]  # GPU 1 fires muted
    [a1] = [a for a in rig.svc.active() if a["labels"]["gpu"] == "1"]
    assert a1["silenced_by"] == s.id and a1["deliveries"][0]["state"] == "silenced"
    rig.run({"0": 20, "1": 95}, 1)  # GPU 0 resolves during the silence; it was told
    assert rig.events()[-1] == ("resolved", "0")
    silences.expire(s.id)
    rig.run({"1": 95}, 1)  # released: still firing after the silence
    assert rig.events()[-1] == ("firing", "1")
    # an alert that fires and ends inside a silence sends nothing at all
    silences.add(["gpu=2"], 60, "test")
    n = len(rig.events())
    rig.run({"1": 95, "2": 95}, 3)
    rig.run({"1": 95, "2": 20}, 3)
    assert len(rig.events()) == n


def test_silence_validation(tmp_path: Path) -> None:
    silences = Rig(tmp_path).svc.silences
    for matchers, duration, comment, msg in [
        ([], 60, "c", "at least one matcher"),
        (["gpu=~.*"], 60, "c", "match every alert"),
        (["gpu=~("], 60, "c", "bad regular expression"),
        (["gpu=1"], 0, "c", "positive duration"),
        (["gpu=1"], 60, " ", "comment"),
    ]:
        with pytest.raises(UsageError, match=msg):
            silences.add(matchers, duration, comment)
    with pytest.raises(UsageError, match="no silence"):
        silences.expire("nope")
    assert silences.all(include_expired=True) == []


def test_maintenance_holds_expected_alerts_and_releases_those_that_outlive_it(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    maint = rig.svc.maintenance
    w = maint.begin("driver update", 600)
    rig.run({"0": 95}, 30)  # the update makes GPU 0 hot for a while
    rig.run({"0": 20}, 5)
    assert rig.events() == []  # fired and resolved inside the window: nobody paged
    rig.run({"1": 95}, 5)  # GPU 1 too, and it stays hot after the maintenance
    maint.end(w.id)
    rig.run({"1": 95}, 59)
    assert rig.events() == []  # within the grace period
    [a] = rig.svc.active()
    assert a["held_by"] == w.id and a["deliveries"][0]["state"] == "held"
    rig.run({"1": 95}, 2)
    assert rig.events() == [("firing", "1")]  # released: it outlived the maintenance
    # a window that is never ended releases its alerts at the deadline
    maint.begin("stuck job", 30)
    rig.run({"1": 95, "2": 95}, 29)
    assert rig.events() == [("firing", "1")]
    rig.run({"1": 95, "2": 95}, 2)
    assert rig.events() == [("firing", "1"), ("firing", "2")]


def test_maintenance_with_its_own_matchers_only_holds_those(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.svc.maintenance.begin("gpu 0 reset", 600, ["gpu=0"])
    rig.run({"0": 95, "1": 95}, 2)
    assert rig.events() == [("firing", "1")]
    with pytest.raises(UsageError, match="reason"):
        rig.svc.maintenance.begin("", 60)
    with pytest.raises(UsageError, match="no maintenance window"):
        rig.svc.maintenance.end("nope")


def test_restart_neither_repeats_a_firing_nor_forgets_a_resolve(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.run({"0": 95, "1": 95}, 2)
    assert sorted(rig.events()) == [("firing", "0"), ("firing", "1")]
    assert [a["labels"]["gpu"] for a in stored_alerts(rig.store)] == ["0", "1"]
    # the agent restarts; GPU 1 cooled down meanwhile
    again = Rig(tmp_path, clock=rig.clock)
    again.run({"0": 95, "1": 20}, 5)
    assert again.events() == [("resolved", "1")]  # and no second firing of GPU 0
    [a0] = again.svc.active()
    assert a0["labels"]["gpu"] == "0" and a0["deliveries"][0]["state"] == "delivered"


def test_restored_alert_waits_for_its_rule_range_before_resolving(tmp_path: Path) -> None:
    windowed = (rule("GpuHot", f"max_over_time({TEMP}[2m]) > 90"),)
    rig = Rig(tmp_path, rules=windowed)
    rig.run({"0": 95}, 1)
    # restarted, with no samples of the last 2 minutes: the condition cannot be judged yet
    again = Rig(tmp_path, clock=rig.clock, rules=windowed)
    again.run({"0": 20}, 119)
    assert again.events() == []
    assert [a["state"] for a in again.svc.active()] == ["firing"]
    again.run({"0": 20}, 2)
    assert again.events() == [("resolved", "0")]


def test_restart_resolves_alerts_of_a_removed_rule(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.run({"0": 95}, 1)
    other = (rule("Other", "vector(0) > 1"),)
    again = Rig(tmp_path, clock=rig.clock, rules=other)
    again.svc.outbox.deliver_due(again.svc.senders)
    assert again.events() == [("resolved", "0")]
    assert stored_alerts(again.store) == []


def test_alertmanager_style_receiver_gets_firing_alerts_resent(tmp_path: Path) -> None:
    rig = Rig(tmp_path, receivers=("am",), resend=60)
    rig.run({"0": 95}, 181)
    assert rig.events("am") == [("firing", "0")] * 4  # at 1, 61, 121, 181 s


def test_delivery_state_in_active(tmp_path: Path) -> None:
    rig = Rig(tmp_path, receivers=("ops", "chat"))
    rig.notifiers["chat"].down = True
    rig.run({"0": 95}, 1)
    [a] = rig.svc.active()
    states = {d["receiver"]: d for d in a["deliveries"]}
    assert states["ops"]["state"] == "delivered" and states["ops"]["last_error"] is None
    assert states["chat"]["state"] == "retrying"
    assert states["chat"]["last_error"] == "chat is down" and states["chat"]["attempts"] == 1
    stored = {d["receiver"]: d["state"] for d in stored_alerts(rig.store)[0]["deliveries"]}
    assert stored == {"ops": "delivered", "chat": "retrying"}


def test_restart_resolves_an_alert_whose_state_row_was_lost(tmp_path: Path) -> None:
    rig = Rig(tmp_path, receivers=("ops", "chat"))
    rig.run({"0": 95}, 1)
    with rig.store.transaction() as conn:
        conn.execute("DELETE FROM alert_state")
    again = Rig(tmp_path, clock=rig.clock, receivers=("ops", "chat"))
    again.svc.outbox.deliver_due(again.svc.senders)
    assert again.events("ops") == again.events("chat") == [("resolved", "0")]
    [alert] = [a for b in again.notifiers["ops"].batches for a in b.alerts]
    assert alert["labels"]["alertname"] == "GpuHot"


def test_an_alert_valued_nan_is_stored_and_survives_a_restart(tmp_path: Path) -> None:
    """SQLite stores NaN as NULL: the NOT NULL value column once refused it and rolled
    back the state of every alert of that evaluation, so a restart resolved them."""
    rules = (rule("RatioOdd", "vector(0/0) != 0"), rule("GpuHot", HOT))
    rig = Rig(tmp_path, rules=rules)
    rig.run({"0": 95}, 2)
    stored = {a["alertname"]: a for a in stored_alerts(rig.store)}
    assert set(stored) == {"RatioOdd", "GpuHot"}
    assert stored["RatioOdd"]["value"] != stored["RatioOdd"]["value"]  # NaN
    again = Rig(tmp_path, clock=rig.clock, rules=rules)
    again.run({"0": 95}, 3)
    assert again.events() == []  # no false resolve, no second firing
    assert sorted(a["alertname"] for a in again.svc.active()) == ["GpuHot", "RatioOdd"]


@pytest.mark.parametrize("matchers", [['alertname!=""'], ["alertname=~.+"], ["node=~.+"],
                                      ["alertname!=Watchdog"], ['severity=""']])
def test_a_silence_that_would_mute_nearly_everything_is_refused(
        tmp_path: Path, matchers: list[str]) -> None:
    rig = Rig(tmp_path)
    with pytest.raises(UsageError, match="match every alert"):
        rig.svc.silences.add(matchers, 3600, "oops")
    rig.svc.silences.add(["alertname=~Gpu.*"], 3600, "a family is fine")


def test_durations_past_a_century_are_refused(tmp_path: Path) -> None:
    from swarm_maint.durations import parse_duration

    for text in ("99999999w", "9" * 400 + "w"):
        with pytest.raises(ValueError, match=r"100 years|finite"):
            parse_duration(text)
