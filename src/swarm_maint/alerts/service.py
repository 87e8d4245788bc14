"""Wires alerting from the config: rules, the engine over the metric history, the outbox."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock
from ..config import Config
from ..monitoring.history import MetricHistory
from ..store import Store
from .engine import AlertEngine
from .notifiers.webhook import WebhookNotifier
from .outbox import Outbox, Sender
from .rules import load_rules

__all__ = ["AlertService", "build_alerts"]

log = logging.getLogger(__name__)


@dataclass
class AlertService:
    engine: AlertEngine
    outbox: Outbox
    senders: dict[str, Sender]
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def evaluate(self, at: float) -> None:
        """Evaluate every rule on the samples just collected; queue the notifications."""
        with self._lock:
            changes = self.engine.evaluate(at)
        for change in changes:
            for receiver in self.senders:
                self.outbox.enqueue(receiver, change)

    def run_delivery(self, stop: threading.Event) -> None:
        self.outbox.run(stop, self.senders)

    def stop(self) -> None:
        self.outbox.wake()  # the delivery loop sees the stop event at once

    def active(self) -> list[dict[str, Any]]:
        with self._lock:
            alerts = self.engine.active()
        return [{"fingerprint": a.fingerprint, "alertname": a.rule, "group": a.group,
                 "state": a.state, "labels": a.labels, "annotations": a.annotations,
                 "value": a.value, "active_since": a.active_since, "fired_at": a.fired_at,
                 "flapping": a.flapping} for a in alerts]


def build_alerts(cfg: Config, history: MetricHistory, store: Store,
                 clock: Clock) -> AlertService:
    ac = cfg.alerts
    rules = load_rules(ac.rule_files, include_defaults=ac.default_rules)
    engine = AlertEngine(rules, history, clock)
    senders: dict[str, Sender] = {
        r.name: WebhookNotifier(r.url, timeout=r.timeout, name=r.name).send
        for r in ac.receivers
    }
    log.debug("alerting: %d rule(s), %d receiver(s)", len(rules), len(senders))
    return AlertService(engine, Outbox(store, clock), senders)
