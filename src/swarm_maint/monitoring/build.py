"""Builds the configured collectors through the plugin registry."""

from __future__ import annotations

import logging

from ..errors import PluginError
from ..plugins import load_factory
from .collector import Collector, CollectorContext, CollectorUnavailable

__all__ = ["GROUP", "build_collectors"]

GROUP = "swarm_maint.collectors"
log = logging.getLogger(__name__)


def build_collectors(ctx: CollectorContext) -> list[Collector]:
    """One collector per configured name, in order.

    A collector the config named explicitly must load (PluginError otherwise); one that is
    only on by default is skipped with an info line when it cannot run on this node.
    """
    explicit = ctx.config.collectors_explicit()
    out: list[Collector] = []
    for name in ctx.config.collectors:
        try:
            factory = load_factory(GROUP, name)
            collector: Collector = factory(ctx)
        except (PluginError, CollectorUnavailable) as exc:
            if explicit:
                if isinstance(exc, PluginError):
                    raise
                raise PluginError(f"collector {name!r} cannot run on this node: {exc}") from None
            log.info("collector %s skipped: %s", name, exc)
            continue
        out.append(collector)
    return out
