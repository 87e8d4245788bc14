"""Alert state machine: evaluates rules over a SeriesSource and reports state changes.

Each sample of a rule's result is an alert, identified by the fingerprint of its labels
(the sample's labels without ``__name__``, the rule's rendered labels on top, and
``alertname``). An alert is *pending* from the first evaluation that sees it, *firing*
once it has been active for the rule's ``for`` (at once when ``for`` is 0) and
*resolved* when its condition has been gone for ``keep_firing_for`` (at once when 0).
A pending alert whose condition goes away is dropped without a notification.

Flapping: an alert that fires again after being resolved more than ``flap_threshold``
times within ``flap_window`` seconds is marked ``flapping`` and held firing (no resolve
notifications) until its condition has not changed for ``flap_window``; then it is
handled normally again (resolved if the condition is gone).

``evaluate`` returns only the changes that need a notification: one ``firing`` when an
alert starts firing and one ``resolved`` when it stops. An error evaluating one rule is
stored in ``rule.last_error`` (and logged) and the rule's alerts keep their state; the
other rules are evaluated as usual.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from ..clock import Clock
from .promql import SeriesSource
from .rules import AlertRule

__all__ = ["Alert", "AlertChange", "AlertEngine", "fingerprint"]

log = logging.getLogger(__name__)

AlertState = Literal["pending", "firing", "resolved"]


def fingerprint(labels: dict[str, str]) -> str:
    """A stable 16-hex-digit hash of a label set (independent of order and process)."""
    h = hashlib.sha256()
    for k, v in sorted(labels.items()):
        h.update(k.encode())
        h.update(b"\xff")
        h.update(v.encode())
        h.update(b"\xfe")
    return h.hexdigest()[:16]


@dataclass
class Alert:
    """One alert of one rule; the engine hands out copies."""

    fingerprint: str
    rule: str
    group: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: AlertState
    active_since: float
    value: float
    fired_at: float | None = None
    resolved_at: float | None = None
    flapping: bool = False


@dataclass(frozen=True)
class AlertChange:
    kind: Literal["firing", "resolved"]
    alert: Alert


@dataclass
class _Tracked:
    alert: Alert
    present: bool = True  # the condition held at the last evaluation
    gone_since: float | None = None  # when the condition went away (while firing)
    last_change: float = 0.0  # last time the condition appeared or went away


@dataclass
class _FlapHistory:
    last_resolved: float
    refires: list[float] = field(default_factory=list)


def _copy(a: Alert) -> Alert:
    return replace(a, labels=dict(a.labels), annotations=dict(a.annotations))


class AlertEngine:
    """Evaluates alerting rules and tracks their alerts' states."""

    def __init__(
        self,
        rules: Iterable[AlertRule],
        source: SeriesSource,
        clock: Clock,
        *,
        flap_threshold: int = 4,
        flap_window: float = 600.0,
        external_labels: dict[str, str] | None = None,
    ) -> None:
        self.rules = list(rules)
        self._external = dict(external_labels or {})
        self._source = source
        self._clock = clock
        self._flap_threshold = flap_threshold
        self._flap_window = flap_window
        self._alerts: list[dict[str, _Tracked]] = [{} for _ in self.rules]
        self._flaps: list[dict[str, _FlapHistory]] = [{} for _ in self.rules]

    # -- evaluation -----------------------------------------------------------------------

    def _samples(self, rule: AlertRule, at: float) -> dict[str, tuple[dict[str, str], float]]:
        res = rule.expr.evaluate(self._source, at)
        samples = [({}, res)] if isinstance(res, float) else res
        out: dict[str, tuple[dict[str, str], float]] = {}
        for sample_labels, value in samples:
            labels = {k: v for k, v in sample_labels.items() if k != "__name__"}
            for k, v in self._external.items():  # e.g. node: the series' own label wins
                labels.setdefault(k, v)
            labels.update(rule.render_labels(labels, value))
            labels["alertname"] = rule.name
            fp = fingerprint(labels)
            if fp in out:
                raise ValueError(
                    "the result has several samples with the same labels after applying "
                    "the rule's labels"
                )
            out[fp] = (labels, value)
        return out

    def evaluate(self, at: float | None = None) -> list[AlertChange]:
        """Evaluate every rule at ``at`` (default: now); the changes to notify."""
        t = self._clock.time() if at is None else at
        changes: list[AlertChange] = []
        for i, rule in enumerate(self.rules):
            try:
                samples = self._samples(rule, t)
            except Exception as e:
                msg = f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
                if rule.last_error != msg:
                    log.warning("alert rule %s/%s failed: %s", rule.group, rule.name, msg)
                rule.last_error = msg
                continue
            rule.last_error = None
            changes.extend(self._update(i, rule, samples, t))
        return changes

    def _update(
        self, i: int, rule: AlertRule, samples: dict[str, tuple[dict[str, str], float]],
        at: float,
    ) -> list[AlertChange]:
        tracked = self._alerts[i]
        flaps = self._flaps[i]
        changes: list[AlertChange] = []
        window = self._flap_window
        for fp in [fp for fp, h in flaps.items() if h.last_resolved < at - window]:
            if fp not in tracked:
                del flaps[fp]
        # conditions that hold now
        for fp, (labels, value) in samples.items():
            annotations = rule.render_annotations(labels, value)
            tr = tracked.get(fp)
            if tr is None:
                alert = Alert(fp, rule.name, rule.group, labels, annotations, "pending",
                              active_since=at, value=value)
                tr = tracked[fp] = _Tracked(alert, last_change=at)
            else:
                if not tr.present:
                    tr.last_change = at
                tr.alert.labels, tr.alert.annotations, tr.alert.value = labels, annotations, value
            tr.present = True
            tr.gone_since = None
            a = tr.alert
            if a.state == "pending" and at - a.active_since >= rule.for_seconds:
                a.state = "firing"
                a.fired_at = at
                hist = flaps.get(fp)
                if hist is not None:  # fires again after a resolve within the window
                    hist.refires = [x for x in hist.refires if x > at - window] + [at]
                    if len(hist.refires) > self._flap_threshold:
                        a.flapping = True
                changes.append(AlertChange("firing", _copy(a)))
        # conditions that went away
        for fp in list(tracked):
            tr = tracked[fp]
            if fp not in samples:
                if tr.present:
                    tr.present = False
                    tr.last_change = at
                    tr.gone_since = at
                if tr.alert.state == "pending":
                    del tracked[fp]
                    continue
            a = tr.alert
            if a.flapping:
                if at - tr.last_change < window:
                    continue
                a.flapping = False
                flaps.pop(fp, None)
                if tr.present:
                    continue
            if tr.present:
                continue
            assert tr.gone_since is not None
            if at - tr.gone_since >= rule.keep_firing_for_seconds:
                a.state = "resolved"
                a.resolved_at = at
                del tracked[fp]
                hist = flaps.setdefault(fp, _FlapHistory(at))
                hist.last_resolved = at
                changes.append(AlertChange("resolved", _copy(a)))
        return changes

    # -- restart --------------------------------------------------------------------------

    def restore(self, alerts: Iterable[Alert], at: float) -> list[Alert]:
        """Take back alerts that were firing before a restart; the ones whose rule is gone
        are returned (they can never resolve here: the caller resolves them).

        A restored alert fires on without a new ``for`` wait; when its condition is absent
        it resolves as usual, but not before the longest range of its rule has passed since
        ``at`` (a fresh agent has no samples yet for ``increase(x[10m])``)."""
        index = {(r.group, r.name): i for i, r in enumerate(self.rules)}
        orphans = []
        for a in alerts:
            i = index.get((a.group, a.rule))
            if i is None:
                orphans.append(_copy(a))
                continue
            restored = replace(_copy(a), state="firing")
            tr = _Tracked(restored, last_change=at)
            tr.present = False
            tr.gone_since = at + self.rules[i].expr.max_range
            self._alerts[i][a.fingerprint] = tr
        return orphans

    # -- inspection -----------------------------------------------------------------------

    def firing(self) -> list[Alert]:
        """The firing alerts themselves (not copies: read them, do not keep or change them;
        the caller serializes with ``evaluate``)."""
        return [tr.alert for alerts in self._alerts for tr in alerts.values()
                if tr.alert.state == "firing"]

    def active(self) -> list[Alert]:
        """Pending and firing alerts (copies), sorted by rule and fingerprint."""
        out = [_copy(tr.alert) for alerts in self._alerts for tr in alerts.values()]
        out.sort(key=lambda a: (a.group, a.rule, a.fingerprint))
        return out

