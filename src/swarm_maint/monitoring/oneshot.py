"""Read the node once, outside the agent (for the CLI when no agent runs)."""

from __future__ import annotations

import time

from ..config import Config
from .build import build_collectors
from .collector import CollectorContext
from .hub import MetricsHub

__all__ = ["local_hub"]


def local_hub(cfg: Config, settle: float = 0.5) -> MetricsHub:
    """A hub that has collected twice ``settle`` seconds apart (rates need two readings).
    The caller closes it."""
    hub = MetricsHub(
        build_collectors(CollectorContext(config=cfg.monitoring)),
        cfg.monitoring.interval,
        cfg.agent.resolved_node_name(),
    )
    hub.collect_once()
    time.sleep(settle)
    hub.collect_once()
    return hub
