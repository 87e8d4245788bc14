"""Pushes alerts to an Alertmanager through its API v2, as Prometheus does.

One POST per batch to ``{url}/api/v2/alerts`` with a JSON list::

    [{"labels": {...}, "annotations": {...}, "startsAt": RFC3339, "endsAt": RFC3339,
      "generatorURL": ""}, ...]

A firing alert is sent with ``endsAt`` = send time + 4 x ``resend_interval``: the service
re-sends it every ``resend_interval``, and if this node goes silent Alertmanager resolves
the alert by itself once ``endsAt`` passes. A resolved alert carries its resolve time as
``endsAt`` (in the past), which resolves it at once. Alertmanager answers 200 with an
empty body, or 400 with a JSON string naming the invalid alerts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..outbox import ZERO_TIME, rfc3339
from . import Batch
from .webhook import post_json

if TYPE_CHECKING:
    from ...config import ReceiverConfig

__all__ = ["VALIDITY_FACTOR", "AlertmanagerNotifier", "create", "postable_alerts"]

# How many resend intervals a firing push stays valid; Prometheus uses 4 x its resend delay.
VALIDITY_FACTOR = 4


def postable_alerts(batch: Batch, now: float, resend_interval: float) -> list[dict[str, Any]]:
    """The API v2 ``PostableAlerts`` document for ``batch`` sent at ``now``."""
    firing_end = rfc3339(now + VALIDITY_FACTOR * resend_interval)
    out = []
    for p in batch.alerts:
        if p["status"] == "firing":
            ends = firing_end
        else:
            # a resolve without its time still has to end the alert, so "now" it is
            ends = p["endsAt"] if p.get("endsAt") not in (None, "", ZERO_TIME) else rfc3339(now)
        out.append({
            "labels": dict(p.get("labels", {})),
            "annotations": dict(p.get("annotations", {})),
            "startsAt": p["startsAt"],
            "endsAt": ends,
            "generatorURL": "",
        })
    return out


class AlertmanagerNotifier:
    """Pushes batches to the Alertmanager at ``url`` (its base URL)."""

    def __init__(
        self,
        url: str,
        *,
        resend_interval: float = 60.0,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        name: str = "alertmanager",
        now: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self.endpoint = f"{self.url}/api/v2/alerts"
        self.name = name
        # read by the service: firing alerts are re-sent this often (seconds)
        self.resend_interval = float(resend_interval)
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._now = now

    def send(self, batch: Batch) -> None:
        body = postable_alerts(batch, self._now(), self.resend_interval)
        post_json(self.endpoint, body, self.headers, self.timeout)


def create(cfg: ReceiverConfig) -> AlertmanagerNotifier:
    return AlertmanagerNotifier(cfg.url, resend_interval=cfg.resend_interval,
                                timeout=cfg.timeout, headers=cfg.headers, name=cfg.name)
