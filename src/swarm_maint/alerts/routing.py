"""Routes: which receivers get an alert, in which group, and how often it repeats.

Routes are tried in order; the first whose matchers all hold takes the alert, and later
routes are tried too only when it sets ``continue_matching``. An alert no route takes goes
to the default receivers (all receivers when none are named). A receiver reached through
two routes gets the alert once, through the first.

The group of an alert is the route plus the values of the route's ``group_by`` labels;
its key reads like Alertmanager's, e.g. ``{}/{severity="critical"}:{alertname="GpuLost"}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .matchers import Matcher, matches_all, parse_matchers

if TYPE_CHECKING:
    from ..config import AlertsConfig

__all__ = ["Destination", "Route", "Router"]


@dataclass(frozen=True)
class Route:
    matchers: tuple[Matcher, ...]
    receivers: tuple[str, ...]
    group_by: tuple[str, ...] = ("alertname",)
    group_wait: float = 0.0
    repeat_interval: float = 4 * 3600.0
    continue_matching: bool = False

    @property
    def path(self) -> str:
        return "{}/{" + ",".join(str(m) for m in self.matchers) + "}"


@dataclass(frozen=True)
class Destination:
    receiver: str
    group_key: str
    group_labels: dict[str, str]
    group_wait: float
    repeat_interval: float


class Router:
    def __init__(
        self,
        routes: Sequence[Route],
        receivers: Sequence[str],
        *,
        default_receivers: Sequence[str] = (),
        group_by: Sequence[str] = ("alertname",),
        repeat_interval: float = 4 * 3600.0,
    ) -> None:
        self.routes = list(routes)
        self._fallback = Route((), tuple(default_receivers or receivers), tuple(group_by),
                               0.0, repeat_interval)
        self._cache: dict[str, list[Destination]] = {}

    @classmethod
    def from_config(cls, cfg: AlertsConfig) -> Router:
        routes = [
            Route(tuple(parse_matchers(r.matchers)), tuple(r.receivers), tuple(r.group_by),
                  r.group_wait, r.repeat_interval, r.continue_matching)
            for r in cfg.routes
        ]
        return cls(routes, [r.name for r in cfg.receivers],
                   default_receivers=cfg.default_receivers, group_by=cfg.group_by,
                   repeat_interval=cfg.repeat_interval)

    def destinations(self, labels: dict[str, str], fingerprint: str = "") -> list[Destination]:
        """Where an alert with ``labels`` goes (cached by ``fingerprint`` when given: an
        alert's labels are fixed by its fingerprint)."""
        if fingerprint:
            hit = self._cache.get(fingerprint)
            if hit is not None:
                return hit
        taken: list[Route] = []
        for route in self.routes:
            if matches_all(route.matchers, labels):
                taken.append(route)
                if not route.continue_matching:
                    break
        if not taken:
            taken = [self._fallback]
        out: list[Destination] = []
        seen: set[str] = set()
        for route in taken:
            group = {k: labels[k] for k in route.group_by if k in labels}
            inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(group.items()))
            path = "{}" if route is self._fallback else route.path
            key = f"{path}:{{{inner}}}"
            for r in route.receivers:
                if r not in seen:
                    seen.add(r)
                    out.append(Destination(r, key, group, route.group_wait,
                                           route.repeat_interval))
        if fingerprint:
            if len(self._cache) > 10_000:  # bounded: alerts come and go
                self._cache.clear()
            self._cache[fingerprint] = out
        return out
