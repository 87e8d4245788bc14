"""The alert state machine over a real in-memory MetricHistory and a fake clock."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric

from swarm_maint.alerts.engine import AlertChange, AlertEngine, fingerprint
from swarm_maint.alerts.promql import compile_expr
from swarm_maint.alerts.rules import AlertRule, Template
from swarm_maint.monitoring.history import MetricHistory

TEMP = "swarm_gpu_temperature_celsius"
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


def rule(name: str, expr: str, for_s: float = 0, keep: float = 0,
         annotations: Mapping[str, str] | None = None,
         labels: Mapping[str, str] | None = None) -> AlertRule:
    ann = dict(annotations or {})
    lab = dict(labels or {"severity": "warning"})
    return AlertRule(group="g", name=name, expr=compile_expr(expr), for_seconds=for_s,
                     keep_firing_for_seconds=keep, labels=lab, annotations=ann,
                     _label_templates={k: Template.compile(v) for k, v in lab.items()},
                     _annotation_templates={k: Template.compile(v) for k, v in ann.items()})


class Rig:
    def __init__(self, *rules: AlertRule, **kw: float) -> None:
        self.h = MetricHistory(store=None, capacity=2000, resolution=60, retention=3600)
        self.clock = FakeClock()
        self.engine = AlertEngine(rules, self.h, self.clock, **kw)  # type: ignore[arg-type]

    def step(self, temps: Mapping[str, float], dt: float = 0) -> list[AlertChange]:
        """Advance the clock by dt, record one frame of temperatures and evaluate."""
        self.clock.t += dt
        fam = GaugeMetricFamily(TEMP, "t", labels=["gpu"])
        for g, v in temps.items():
            fam.add_metric([g], v)
        fams: list[Metric] = [fam]
        self.h.record(self.clock.t, fams)
        return self.engine.evaluate()


def kinds(changes: list[AlertChange]) -> list[tuple[str, str]]:
    return [(c.kind, c.alert.labels.get("gpu", "")) for c in changes]


HOT = f"{TEMP} > 80"


def test_for_zero_fires_at_once_and_only_once() -> None:
    rig = Rig(rule("Hot", HOT))
    ch = rig.step({"0": 90})
    assert kinds(ch) == [("firing", "0")]
    a = ch[0].alert
    assert a.state == "firing" and a.fired_at == T0 and a.active_since == T0
    assert a.labels == {"gpu": "0", "severity": "warning", "alertname": "Hot"}
    assert a.value == 90
    for _ in range(5):
        assert rig.step({"0": 91}, dt=10) == []
    [act] = rig.engine.active()
    assert act.state == "firing" and act.value == 91 and act.fired_at == T0


def test_for_goes_pending_then_fires_exactly_after_60s() -> None:
    rig = Rig(rule("Hot", HOT, for_s=60))
    assert rig.step({"0": 90}) == []
    [a] = rig.engine.active()
    assert a.state == "pending" and a.active_since == T0 and a.fired_at is None
    for _ in range(5):
        assert rig.step({"0": 90}, dt=10) == []  # T0 + 10 .. T0 + 50
    assert rig.engine.active()[0].state == "pending"
    ch = rig.step({"0": 90}, dt=9.999)
    assert ch == []
    ch = rig.step({"0": 90}, dt=0.001)  # exactly T0 + 60
    assert kinds(ch) == [("firing", "0")]
    assert ch[0].alert.fired_at == pytest.approx(T0 + 60)
    assert ch[0].alert.active_since == T0


def test_pending_that_goes_away_is_dropped_silently() -> None:
    rig = Rig(rule("Hot", HOT, for_s=60))
    rig.step({"0": 90})
    assert rig.step({"0": 50}, dt=30) == []
    assert rig.engine.active() == []
    assert rig.step({"0": 90}, dt=40) == []  # pending again from scratch
    assert rig.engine.active()[0].active_since == T0 + 70


def test_resolve() -> None:
    rig = Rig(rule("Hot", HOT))
    rig.step({"0": 90})
    ch = rig.step({"0": 70}, dt=10)
    assert kinds(ch) == [("resolved", "0")]
    assert ch[0].alert.state == "resolved" and ch[0].alert.resolved_at == T0 + 10
    assert rig.engine.active() == []
    assert rig.step({"0": 70}, dt=10) == []


def test_keep_firing_for_holds() -> None:
    rig = Rig(rule("Hot", HOT, keep=60))
    rig.step({"0": 90})
    assert rig.step({"0": 70}, dt=10) == []  # gone since T0 + 10
    assert rig.step({"0": 70}, dt=30) == []
    assert rig.engine.active()[0].state == "firing"
    assert rig.step({"0": 90}, dt=10) == []  # back: the hold restarts when it goes again
    assert rig.step({"0": 70}, dt=10) == []  # gone since T0 + 60
    assert rig.step({"0": 70}, dt=59) == []
    assert kinds(rig.step({"0": 70}, dt=1)) == [("resolved", "0")]


def test_flapping_is_held_then_resolved_after_stable_window() -> None:
    rig = Rig(rule("Hot", HOT))
    notes: list[tuple[str, str]] = []
    # fire, resolve, then fire again 5 times: the 5th refire (> 4) marks it flapping
    notes += kinds(rig.step({"0": 90}))
    for _ in range(5):
        notes += kinds(rig.step({"0": 70}, dt=30))
        notes += kinds(rig.step({"0": 90}, dt=30))
    assert notes == [("firing", "0"), ("resolved", "0")] * 5 + [("firing", "0")]
    [a] = rig.engine.active()
    assert a.flapping and a.state == "firing"
    # keeps flapping: no notifications at all
    for _ in range(4):
        assert rig.step({"0": 70}, dt=30) == []
        assert rig.step({"0": 90}, dt=30) == []
    assert rig.engine.active()[0].flapping
    last_change = rig.clock.t + 30
    assert rig.step({"0": 70}, dt=30) == []  # gone for good from here
    for _ in range(19):
        assert rig.step({"0": 70}, dt=30) == []
    assert rig.clock.t == last_change + 570
    assert rig.engine.active()[0].state == "firing"
    assert rig.step({"0": 70}, dt=29) == []
    ch = rig.step({"0": 70}, dt=1)  # stable for exactly the 10 min window
    assert kinds(ch) == [("resolved", "0")]
    assert not ch[0].alert.flapping


def test_flapping_alert_still_present_after_window_keeps_firing() -> None:
    rig = Rig(rule("Hot", HOT), flap_threshold=1, flap_window=100)
    rig.step({"0": 90})
    rig.step({"0": 70}, dt=10)
    rig.step({"0": 90}, dt=10)
    rig.step({"0": 70}, dt=10)
    assert kinds(rig.step({"0": 90}, dt=10)) == [("firing", "0")]  # 2nd refire > 1
    assert rig.engine.active()[0].flapping
    assert rig.step({"0": 90}, dt=100) == []
    [a] = rig.engine.active()
    assert not a.flapping and a.state == "firing"
    assert kinds(rig.step({"0": 70}, dt=10)) == [("resolved", "0")]


def test_two_series_two_alerts_with_stable_fingerprints() -> None:
    rig = Rig(rule("Hot", HOT))
    ch = rig.step({"0": 90, "1": 95, "2": 20})
    assert sorted(kinds(ch)) == [("firing", "0"), ("firing", "1")]
    fps = {c.alert.labels["gpu"]: c.alert.fingerprint for c in ch}
    assert fps["0"] != fps["1"]
    assert fps["0"] == fingerprint({"alertname": "Hot", "severity": "warning", "gpu": "0"})
    rig.step({"0": 91, "1": 96, "2": 20}, dt=10)
    assert {a.labels["gpu"]: a.fingerprint for a in rig.engine.active()} == fps
    ch = rig.step({"0": 91, "1": 50}, dt=10)
    assert kinds(ch) == [("resolved", "1")]
    assert ch[0].alert.fingerprint == fps["1"]


def test_fingerprint_order_independent() -> None:
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"a": "1", "b": "2"}) != fingerprint({"a": "12"})
    assert len(fingerprint({})) == 16


def test_annotations_rendered_with_labels_and_value() -> None:
    rig = Rig(rule("Hot", HOT, annotations={
        "summary": "GPU {{ $labels.gpu }} is at {{ $value }} C",
        "description": '{{ printf "%.1f" $value }} ({{ $labels.severity }})',
    }))
    [c] = rig.step({"3": 90.5})
    assert c.alert.annotations == {"summary": "GPU 3 is at 90.5 C",
                                   "description": "90.5 (warning)"}
    rig.step({"3": 92}, dt=10)
    assert rig.engine.active()[0].annotations["summary"] == "GPU 3 is at 92 C"


def test_templated_rule_label() -> None:
    rig = Rig(rule("Hot", HOT, labels={"severity": "critical", "where": "gpu{{ $labels.gpu }}"}))
    [c] = rig.step({"7": 90})
    assert c.alert.labels["where"] == "gpu7"


def test_rule_error_does_not_stop_others() -> None:
    # on() with two series on each side: ValueError (many-to-many) at evaluation
    bad = rule("Broken", f"{TEMP} + on() {TEMP}")
    good = rule("Hot", HOT)
    rig = Rig(bad, good)
    ch = rig.step({"0": 90, "1": 91})
    assert sorted(kinds(ch)) == [("firing", "0"), ("firing", "1")]
    assert bad.last_error is not None and good.last_error is None
    assert {a.rule for a in rig.engine.active()} == {"Hot"}
    # once gpu 1 is older than the 5 min lookback the rule evaluates and its error clears
    ch = rig.step({"0": 90}, dt=301)
    assert bad.last_error is None
    assert {(c.alert.rule, c.kind) for c in ch} == {("Broken", "firing"), ("Hot", "resolved")}


def test_duplicate_labelset_after_rule_labels_is_an_error() -> None:
    r = rule("Dup", f"{TEMP} > 0", labels={"gpu": "all"})
    rig = Rig(r)
    assert rig.step({"0": 1, "1": 2}) == []
    assert r.last_error is not None and "same labels" in r.last_error


def test_watchdog_vector_and_evaluate_at() -> None:
    rig = Rig(rule("Watchdog", "vector(1)", labels={"severity": "none"}))
    ch = rig.engine.evaluate(at=T0 + 5)
    assert kinds(ch) == [("firing", "")]
    assert ch[0].alert.labels == {"alertname": "Watchdog", "severity": "none"}
    assert ch[0].alert.fired_at == T0 + 5
    assert rig.engine.evaluate() == []
