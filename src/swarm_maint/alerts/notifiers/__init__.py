"""Alert notifiers: deliver a batch of alert notifications somewhere.

One module per receiver type, each with ``create(cfg: ReceiverConfig) -> Notifier``,
registered in the ``swarm_maint.notifiers`` entry-point group (built-ins too), so a
third-party receiver type is a package that registers its own ``create``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ...config import ReceiverConfig

__all__ = ["GROUP", "Batch", "Notifier", "NotifyError", "build_notifier", "one_line"]

GROUP = "swarm_maint.notifiers"


class NotifyError(Exception):
    """A delivery failed; the message is one line."""


@dataclass(frozen=True)
class Batch:
    """Notifications for one receiver and one alert group, oldest first.

    Each entry of ``alerts`` has the shape of one alert of Alertmanager's webhook:
    ``status`` ("firing" or "resolved"), ``labels``, ``annotations``, ``startsAt``,
    ``endsAt`` (RFC 3339; Go's zero time while firing) and ``fingerprint``.
    """

    receiver: str
    alerts: list[dict[str, Any]]
    group_labels: dict[str, str] = field(default_factory=dict)
    group_key: str = "{}:{}"

    @property
    def status(self) -> str:
        """"firing" when any alert of the batch fires, else "resolved"."""
        return "firing" if any(a["status"] == "firing" for a in self.alerts) else "resolved"


class Notifier(Protocol):
    name: str

    def send(self, batch: Batch) -> None:
        """Deliver ``batch``; raise (preferably ``NotifyError``) on failure."""
        ...


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc`` as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return (f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)[:limit]


def build_notifier(cfg: ReceiverConfig) -> Notifier:
    """The notifier of a configured receiver, loaded through the entry-point registry."""
    from ...plugins import load_factory

    notifier: Notifier = load_factory(GROUP, cfg.type)(cfg)
    return notifier
