"""Alert notifiers: deliver a batch of alert payloads (see ``alerts.outbox``) somewhere."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Notifier", "NotifyError"]


class NotifyError(Exception):
    """A delivery failed; the message is one line."""


class Notifier(Protocol):
    name: str

    def send(self, payloads: list[dict[str, Any]]) -> None:
        """Deliver ``payloads`` (one per alert state change); raise on failure."""
        ...
