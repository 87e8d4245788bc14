"""Posts alert notifications in Alertmanager's webhook format (version "4").

One POST per batch::

    {"version": "4", "groupKey": KEY, "truncatedAlerts": 0, "status": "firing",
     "receiver": NAME, "groupLabels": {...}, "commonLabels": {...},
     "commonAnnotations": {...}, "externalURL": "", "alerts": [{"status", "labels",
     "annotations", "startsAt", "endsAt", "generatorURL": "", "fingerprint"}, ...]}

``status`` is "firing" when any alert of the batch is firing, else "resolved";
``commonLabels``/``commonAnnotations`` are the pairs shared by every alert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from . import Batch, NotifyError, one_line

if TYPE_CHECKING:
    from ...config import ReceiverConfig

__all__ = ["WebhookNotifier", "create", "post_json", "webhook_body"]


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    common = dict(maps[0])
    for m in maps[1:]:
        common = {k: v for k, v in common.items() if m.get(k) == v}
    return common


def webhook_body(batch: Batch) -> dict[str, Any]:
    """The Alertmanager webhook document for ``batch``."""
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
        for p in batch.alerts
    ]
    return {
        "version": "4",
        "groupKey": batch.group_key,
        "truncatedAlerts": 0,
        "status": batch.status,
        "receiver": batch.receiver,
        "groupLabels": dict(batch.group_labels),
        "commonLabels": _common([a["labels"] for a in alerts]),
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": "",
        "alerts": alerts,
    }


def post_json(url: str, body: Any, headers: dict[str, str], timeout: float) -> httpx.Response:
    """POST ``body`` as JSON; ``NotifyError`` (one line) unless the answer is 2xx."""
    try:
        resp = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError, ValueError) as exc:
        # a URL or header httpx cannot send is a failed delivery too, said in one line
        raise NotifyError(f"{url}: {one_line(exc)}") from None
    if not 200 <= resp.status_code < 300:
        text = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else ""
        raise NotifyError(f"{url}: HTTP {resp.status_code}" + (f": {text}" if text else ""))
    return resp


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

    def send(self, batch: Batch) -> None:
        post_json(self.url, webhook_body(batch), self.headers, self.timeout)


def create(cfg: ReceiverConfig) -> WebhookNotifier:
    return WebhookNotifier(cfg.url, timeout=cfg.timeout, headers=cfg.headers, name=cfg.name)
