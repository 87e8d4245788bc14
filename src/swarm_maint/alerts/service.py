"""Alerting in the agent: rules evaluated on every frame, routed, muted, and queued durably.

After each evaluation the service makes every receiver's view match the firing alerts:

* a firing alert a receiver has not been told about is queued for it (on first firing,
  or when a silence or maintenance window that muted it ends: the alert is *released*);
* a firing alert is queued again after its route's ``repeat_interval`` (an Alertmanager
  receiver: its ``resend_interval``), unless the previous one still waits in the outbox;
* a resolved alert is queued only for the receivers that were told it fired (muting never
  swallows a resolve, and a muted alert that ends unseen sends nothing).

What each receiver was told (``alert_receiver_state``) and the firing alerts
(``alert_state``) are stored, so a restarted agent neither repeats a firing nor forgets
to resolve an alert whose condition ended while it was down.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock
from ..config import Config, ReceiverConfig
from ..store import Store
from .engine import Alert, AlertChange, AlertEngine
from .maintenance import Maintenance
from .matchers import Matcher, matches_all
from .notifiers import Batch, Notifier, build_notifier
from .outbox import ZERO_TIME, Outbox, Sender, rfc3339
from .promql import SeriesSource
from .routing import Router
from .rules import load_rules
from .silences import Silences, silenced_by

__all__ = ["AlertService", "build_alerts", "stored_alerts"]

log = logging.getLogger(__name__)

Mutes = list[tuple[str, list[Matcher]]]


@dataclass
class AlertService:
    engine: AlertEngine
    outbox: Outbox
    notifiers: dict[str, Notifier]
    router: Router
    silences: Silences
    maintenance: Maintenance
    store: Store
    clock: Clock
    send_resolved: dict[str, bool] = field(default_factory=dict)
    node: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # (receiver, fingerprint) -> when the last firing notification was queued
    _told: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def senders(self) -> dict[str, Sender]:
        return {name: n.send for name, n in self.notifiers.items()}

    # -- restart ----------------------------------------------------------------------------

    def restore(self, at: float) -> None:
        """Load what was firing and what receivers were told before the last stop."""
        told_rows = self.store.query(
            "SELECT receiver, fingerprint, last_enqueued, alert FROM alert_receiver_state")
        self._told = {(r, fp): t for r, fp, t, _ in told_rows}
        saved = {fp: json.loads(alert) for _, fp, _, alert in told_rows}
        alerts = [
            Alert(fp, rule, group, json.loads(labels), json.loads(ann), "firing",
                  active_since=since, value=float(value), fired_at=fired)
            for fp, rule, group, labels, ann, since, fired, value in self.store.query(
                "SELECT fingerprint, rule, rule_group, labels, annotations, active_since,"
                " fired_at, value FROM alert_state")
        ]
        with self._lock:
            orphans = self.engine.restore(alerts, at)
        known = {a.fingerprint for a in alerts}
        for a in orphans:  # their rule is gone: they can only end
            a.state, a.resolved_at = "resolved", at
            self._persist(AlertChange("resolved", a))
            self._resolved(AlertChange("resolved", a))
        # told about an alert nobody remembers firing (its state row was lost): resolve it
        for fp in {fp for _, fp in self._told} - known:
            info = saved[fp]
            ghost = Alert(fp, info["labels"].get("alertname", ""), "", info["labels"],
                          info["annotations"], "resolved",
                          active_since=info.get("active_since", at), value=0.0,
                          resolved_at=at)
            self._resolved(AlertChange("resolved", ghost))

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, at: float) -> None:
        """Evaluate every rule on the samples just collected; queue the notifications."""
        with self._lock:
            changes = self.engine.evaluate(at)
            firing = list(self.engine.firing())
        for change in changes:
            self._persist(change)
            if change.kind == "resolved":
                self._resolved(change)
        if not firing:
            return
        mutes = self.silences.active(at) + self.maintenance.holding(at)
        for alert in firing:
            self._reconcile(alert, at, mutes)

    def _persist(self, change: AlertChange) -> None:
        a = change.alert
        with self.store.transaction() as conn:
            if change.kind == "firing":
                conn.execute(
                    "INSERT OR REPLACE INTO alert_state VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (a.fingerprint, a.rule, a.group, json.dumps(a.labels),
                     json.dumps(a.annotations), a.active_since, a.fired_at or a.active_since,
                     _stored_value(a.value)))
            else:
                conn.execute("DELETE FROM alert_state WHERE fingerprint = ?", (a.fingerprint,))

    def _reconcile(self, alert: Alert, at: float, mutes: Mutes) -> None:
        muted: bool | None = None
        for dest in self.router.destinations(alert.labels, alert.fingerprint):
            key = (dest.receiver, alert.fingerprint)
            told = self._told.get(key)
            repeat = dest.repeat_interval
            resend = getattr(self.notifiers.get(dest.receiver), "resend_interval", None)
            if isinstance(resend, int | float) and resend > 0:
                repeat = min(repeat, float(resend))
            if told is not None and at - told < repeat:
                continue
            if muted is None:
                muted = any(matches_all(m, alert.labels) for _, m in mutes)
            if muted:
                continue
            if told is not None and self.outbox.queued(dest.receiver, alert.fingerprint):
                continue  # the last one is not out yet: no pile-up while a receiver is down
            self.outbox.enqueue(dest.receiver, AlertChange("firing", alert),
                                group_key=dest.group_key, group_labels=dest.group_labels,
                                group_wait=dest.group_wait if told is None else 0.0)
            self._told[key] = at
            with self.store.transaction() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO alert_receiver_state VALUES (?, ?, ?, 'firing', ?)",
                    (dest.receiver, alert.fingerprint,
                     json.dumps({"labels": alert.labels, "annotations": alert.annotations,
                                 "active_since": alert.active_since}), at))

    def _resolved(self, change: AlertChange) -> None:
        a = change.alert
        for dest in self.router.destinations(a.labels, a.fingerprint):
            if self._told.pop((dest.receiver, a.fingerprint), None) is None:
                continue
            if self.send_resolved.get(dest.receiver, True):
                self.outbox.enqueue(dest.receiver, change, group_key=dest.group_key,
                                    group_labels=dest.group_labels)
        # receivers no longer routed to (config changed) are forgotten as well
        for key in [k for k in self._told if k[1] == a.fingerprint]:
            del self._told[key]
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM alert_receiver_state WHERE fingerprint = ?",
                         (a.fingerprint,))

    # -- delivery ---------------------------------------------------------------------------

    def run_delivery(self, stop: threading.Event) -> None:
        self.outbox.run(stop, self.senders)

    def stop(self) -> None:
        self.outbox.wake()  # the delivery loop sees the stop event at once

    def send_test(self, receiver: str) -> dict[str, Any]:
        """Send a test notification to ``receiver`` now, bypassing the outbox; raises the
        notifier's error (one line) when it fails."""
        return send_test(self.notifiers, receiver, self.node, self.clock.time())

    # -- inspection -------------------------------------------------------------------------

    def active(self) -> list[dict[str, Any]]:
        """Pending and firing alerts with each receiver's delivery state."""
        with self._lock:
            alerts = self.engine.active()
        now = self.clock.time()
        silences = self.silences.active(now)
        windows = self.maintenance.holding(now)
        queued: dict[tuple[str, str], dict[str, Any]] = {}
        row: dict[str, Any] | None
        for row in self.outbox.pending():
            queued.setdefault((row["receiver"], row["fingerprint"]), row)
        out = []
        for a in alerts:
            silence = silenced_by(silences, a.labels)
            window = silenced_by(windows, a.labels)
            deliveries = []
            for dest in self.router.destinations(a.labels, a.fingerprint):
                key = (dest.receiver, a.fingerprint)
                row = queued.get(key)
                if a.state == "pending":
                    state = "pending"
                elif row is not None:
                    state = "retrying" if row["attempts"] else "queued"
                elif key in self._told:
                    state = "delivered"
                elif silence is not None:
                    state = "silenced"
                elif window is not None:
                    state = "held"
                else:
                    state = "queued"
                deliveries.append({
                    "receiver": dest.receiver, "state": state,
                    "attempts": row["attempts"] if row else 0,
                    "last_error": row["last_error"] if row else None,
                    "next_attempt": row["next_attempt"] if row else None,
                    "last_sent": self._told.get(key),
                })
            out.append({
                "fingerprint": a.fingerprint, "alertname": a.rule, "group": a.group,
                "state": a.state, "labels": a.labels, "annotations": a.annotations,
                "value": a.value, "active_since": a.active_since, "fired_at": a.fired_at,
                "flapping": a.flapping, "silenced_by": silence, "held_by": window,
                "deliveries": deliveries,
            })
        return out


def send_test(notifiers: dict[str, Notifier], receiver: str, node: str,
              now: float) -> dict[str, Any]:
    """Send one made-up firing alert to ``receiver``; the alert sent."""
    from ..errors import UsageError

    notifier = notifiers.get(receiver)
    if notifier is None:
        known = ", ".join(sorted(notifiers)) or "none configured"
        raise UsageError(f"no receiver named {receiver!r} (receivers: {known})")
    alert = {
        "status": "firing",
        "labels": {"alertname": "SwarmMaintTest", "severity": "none", "node": node},
        "annotations": {"summary": f"Test notification from swarm-maint on {node}",
                        "description": "Sent by 'swarm-maint alerts test'; no action needed."},
        "startsAt": rfc3339(now), "endsAt": ZERO_TIME, "fingerprint": "0" * 16,
    }
    notifier.send(Batch(receiver, [alert], {"alertname": "SwarmMaintTest"},
                        '{}:{alertname="SwarmMaintTest"}'))
    return alert


def build_notifiers(receivers: list[ReceiverConfig]) -> dict[str, Notifier]:
    return {r.name: build_notifier(r) for r in receivers}


def build_alerts(cfg: Config, history: SeriesSource, store: Store,
                 clock: Clock) -> AlertService:
    ac = cfg.alerts
    node = cfg.agent.resolved_node_name()
    rules = load_rules(ac.rule_files, include_defaults=ac.default_rules)
    engine = AlertEngine(rules, history, clock, external_labels={"node": node})
    service = AlertService(
        engine=engine,
        outbox=Outbox(store, clock, max_per_second=ac.max_per_second),
        notifiers=build_notifiers(ac.receivers),
        router=Router.from_config(ac),
        silences=Silences(store, clock),
        maintenance=Maintenance(store, clock, ac.maintenance_expected, ac.maintenance_grace),
        store=store,
        clock=clock,
        send_resolved={r.name: r.send_resolved for r in ac.receivers},
        node=node,
    )
    service.restore(clock.time())
    log.debug("alerting: %d rule(s), %d receiver(s)", len(rules), len(service.notifiers))
    return service


def stored_alerts(store: Store) -> list[dict[str, Any]]:
    """The firing alerts as the state database has them (when no agent answers)."""
    told: dict[str, list[dict[str, Any]]] = {}
    for receiver, fp, last in store.query(
            "SELECT receiver, fingerprint, last_enqueued FROM alert_receiver_state"):
        told.setdefault(fp, []).append({"receiver": receiver, "last_sent": last})
    pending: dict[str, list[dict[str, Any]]] = {}
    for receiver, fp, attempts, err in store.query(
            "SELECT receiver, fingerprint, attempts, last_error FROM alert_outbox"
            " WHERE delivered IS NULL ORDER BY id"):
        pending.setdefault(fp, []).append({"receiver": receiver, "attempts": attempts,
                                           "last_error": err})
    out = []
    for fp, rule, group, labels, ann, since, fired, value in store.query(
            "SELECT fingerprint, rule, rule_group, labels, annotations, active_since,"
            " fired_at, value FROM alert_state ORDER BY rule_group, rule, fingerprint"):
        waiting = {p["receiver"]: p for p in pending.get(fp, [])}
        deliveries = []
        for t in told.get(fp, []):
            p = waiting.get(t["receiver"])
            deliveries.append({
                "receiver": t["receiver"],
                "state": ("retrying" if p["attempts"] else "queued") if p else "delivered",
                "attempts": p["attempts"] if p else 0,
                "last_error": p["last_error"] if p else None,
                "next_attempt": None, "last_sent": t["last_sent"],
            })
        out.append({
            "fingerprint": fp, "alertname": rule, "group": group, "state": "firing",
            "labels": json.loads(labels), "annotations": json.loads(ann), "value": float(value),
            "active_since": since, "fired_at": fired, "flapping": False,
            "silenced_by": None, "held_by": None, "deliveries": deliveries,
        })
    return out


def _stored_value(value: float) -> float | str:
    """An alert's value for its REAL column: SQLite stores NaN as NULL, which the NOT NULL
    column refuses, and that once rolled back the state of every alert changed in the
    same evaluation. NaN (``x / 0`` in a rule, as in Prometheus) is kept as the text
    ``NaN``, which ``float()`` reads back; infinities are REALs already."""
    return "NaN" if math.isnan(value) else value
