"""Posts alert notifications in Alertmanager's webhook format (version "4").

One POST per batch::

    {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing",
     "receiver": NAME, "groupLabels": {}, "commonLabels": {...}, "commonAnnotations": {...},
     "externalURL": "", "alerts": [{"status", "labels", "annotations", "startsAt",
     "endsAt", "generatorURL": "", "fingerprint"}, ...]}

``status`` is "firing" when any alert of the batch is firing, else "resolved";
``commonLabels``/``commonAnnotations`` are the pairs shared by every alert.
"""

from __future__ import annotations

from typing import Any

import httpx

from . import NotifyError

__all__ = ["WebhookNotifier", "webhook_body"]


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    common = dict(maps[0])
    for m in maps[1:]:
        common = {k: v for k, v in common.items() if m.get(k) == v}
    return common


def webhook_body(receiver: str, payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """The Alertmanager webhook document for ``payloads``."""
    alerts = [
        {
            "status": p["status"],
            "labels": dict(p.get("labels", {})),
            "annotations": dict(p.get("annotations", {})),
            "startsAt": p["startsAt"],
            "endsAt": p["endsAt"],
            "generatorURL": "",
            "fingerprint": p["fingerprint"],
        }
        for p in payloads
    ]
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": receiver,
        "groupLabels": {},
        "commonLabels": _common([a["labels"] for a in alerts]),
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": "",
        "alerts": alerts,
    }


class WebhookNotifier:
    """Sends batches to ``url`` with httpx; a non-2xx answer raises ``NotifyError``."""

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        *,
        name: str = "webhook",
    ) -> None:
        self.url = url
        self.name = name
        self.timeout = timeout
        self.headers = dict(headers or {})

    def send(self, payloads: list[dict[str, Any]]) -> None:
        body = webhook_body(self.name, payloads)
        try:
            resp = httpx.post(self.url, json=body, headers=self.headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            detail = str(exc).strip().splitlines()
            msg = f"{type(exc).__name__}: {detail[0]}" if detail else type(exc).__name__
            raise NotifyError(f"{self.url}: {msg}") from None
        if not 200 <= resp.status_code < 300:
            text = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else ""
            raise NotifyError(
                f"{self.url}: HTTP {resp.status_code}" + (f": {text}" if text else "")
            )
