"""Posts alert notifications to a Slack-compatible incoming webhook.

One POST per batch::

    {"text": "[FIRING:2] GpuLost (gpu-node-17)",         # fallback / push notification
     "channel": "#ops",                                  # only when configured
     "attachments": [
        {"color": "danger" | "warning" | "good",
         "title": "[FIRING] GpuLost on gpu-node-17",
         "text": "<summary>\\n<description>",
         "fields": [{"title": "severity", "value": "critical", "short": true}, ...],
         "footer": "started <startsAt>[, resolved <endsAt>]",
         "fallback": "<title>", "mrkdwn_in": ["text"]},
        ...]}

One attachment per alert ("danger": firing critical, "warning": other firing, "good":
resolved); at most ``MAX_ATTACHMENTS``: a longer batch shows its first alerts and a last
attachment "and N more". Texts are truncated so the message stays small and readable.

Slack answers 200 "ok", or an error status with a token such as ``invalid_payload``;
some compatible servers answer 200 with JSON ``{"ok": false, "error": ...}``, which is a
failure too. The webhook URL is a secret (its path is the token), so errors name only
its scheme and host.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import Batch, NotifyError
from .webhook import post_json

if TYPE_CHECKING:
    from ...config import ReceiverConfig

__all__ = ["MAX_ATTACHMENTS", "SlackNotifier", "batch_title", "create", "slack_body"]

MAX_ATTACHMENTS = 20
_MAX_TEXT = 1000
_MAX_VALUE = 200
_TITLE_LABELS = ("alertname", "node")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escape(text: str) -> str:
    # Slack's mrkdwn reserves these three characters (links, mentions).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def batch_title(batch: Batch) -> str:
    """One line naming the batch, e.g. ``[FIRING:2] GpuLost (gpu-node-17)``.

    Like Alertmanager's default subject: the status (with the number firing), the
    group's label values, then the node the alerts share, if any.
    """
    firing = sum(1 for a in batch.alerts if a["status"] == "firing")
    head = f"[FIRING:{firing}]" if firing else "[RESOLVED]"
    labels = [a.get("labels", {}) for a in batch.alerts]
    words = [v for _, v in sorted(batch.group_labels.items())]
    if not words:
        names = {lab.get("alertname", "") for lab in labels}
        words = [names.pop() if len(names) == 1 and "" not in names else "alerts"]
    parts = [head, *words]
    nodes = {lab.get("node", "") for lab in labels}
    if len(nodes) == 1 and "" not in nodes and "node" not in batch.group_labels:
        parts.append(f"({nodes.pop()})")
    # one bounded line: it becomes an e-mail Subject, where a newline is an error
    return _cut(" ".join(" ".join(parts).split()), _MAX_VALUE)


def _attachment(alert: dict[str, Any]) -> dict[str, Any]:
    labels: dict[str, str] = alert.get("labels", {})
    annotations: dict[str, str] = alert.get("annotations", {})
    firing = alert["status"] == "firing"
    severity = labels.get("severity", "")
    color = "good" if not firing else "danger" if severity == "critical" else "warning"
    title = f"[{'FIRING' if firing else 'RESOLVED'}] {labels.get('alertname', 'alert')}"
    if labels.get("node"):
        title += f" on {labels['node']}"
    lines = [annotations[k] for k in ("summary", "description") if annotations.get(k)]
    fields = [{"title": "severity", "value": severity, "short": True}] if severity else []
    fields += [
        {"title": k, "value": _cut(v, _MAX_VALUE), "short": len(v) <= 40}
        for k, v in sorted(labels.items())
        if k not in (*_TITLE_LABELS, "severity")
    ]
    footer = f"started {alert['startsAt']}"
    if not firing:
        footer += f", resolved {alert['endsAt']}"
    return {
        "color": color,
        "title": _cut(title, _MAX_VALUE),
        "text": _cut(_escape("\n".join(lines)), _MAX_TEXT),
        "fields": fields,
        "footer": footer,
        "fallback": _cut(title, _MAX_VALUE),
        "mrkdwn_in": ["text"],
    }


def slack_body(batch: Batch, channel: str = "") -> dict[str, Any]:
    """The incoming-webhook document for ``batch``."""
    alerts = batch.alerts
    if len(alerts) <= MAX_ATTACHMENTS:
        attachments = [_attachment(a) for a in alerts]
    else:
        shown = MAX_ATTACHMENTS - 1
        more = f"and {len(alerts) - shown} more"
        attachments = [_attachment(a) for a in alerts[:shown]]
        attachments.append({"text": more, "fallback": more})
    body: dict[str, Any] = {"text": _escape(batch_title(batch)), "attachments": attachments}
    if channel:
        body["channel"] = channel
    return body


class SlackNotifier:
    """Sends batches to a Slack-compatible incoming webhook at ``url``."""

    def __init__(
        self,
        url: str,
        *,
        channel: str = "",
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        name: str = "slack",
    ) -> None:
        self.url = url
        parts = urlsplit(url)
        # what errors show: the token in the path must not end up in logs and the API
        self.server = f"slack {parts.scheme}://{parts.netloc}"
        self.name = name
        self.channel = channel
        self.timeout = timeout
        self.headers = dict(headers or {})

    def send(self, batch: Batch) -> None:
        try:
            resp = post_json(self.url, slack_body(batch, self.channel), self.headers,
                             self.timeout)
        except NotifyError as exc:
            detail = str(exc).removeprefix(f"{self.url}: ").replace(self.url, "<url>")
            raise NotifyError(f"{self.server}: {detail}") from None
        text = resp.text.strip()
        if not text or text == "ok":
            return
        try:
            doc = json.loads(text)
        except ValueError:
            return  # some other 2xx answer of a compatible server
        if isinstance(doc, dict) and (doc.get("ok") is False or doc.get("success") is False
                                      or doc.get("error")):
            error = str(doc.get("error") or "ok=false").splitlines()[0][:200]
            raise NotifyError(f"{self.server}: HTTP {resp.status_code}: {error}")


def create(cfg: ReceiverConfig) -> SlackNotifier:
    return SlackNotifier(cfg.url, channel=cfg.channel, timeout=cfg.timeout,
                         headers=cfg.headers, name=cfg.name)
