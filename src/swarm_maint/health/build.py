"""Builds the configured health checks through the plugin registry."""

from __future__ import annotations

import logging

from ..errors import PluginError
from ..plugins import load_factory
from .check import HealthCheck, HealthContext

__all__ = ["GROUP", "all_checks", "build_checks", "unknown_overrides"]

GROUP = "swarm_maint.checks"
log = logging.getLogger(__name__)


def build_checks(ctx: HealthContext) -> list[HealthCheck]:
    """Every check of every configured family (plus the custom checks), minus those an
    override disables. A family that cannot load is an error only when listed explicitly."""
    cfg = ctx.config
    checks = all_checks(ctx)
    unknown = unknown_overrides(ctx, checks)
    if unknown:
        log.warning("health.checks names unknown checks: %s", ", ".join(unknown))
    return [c for c in checks if cfg.checks.get(c.name) is None or cfg.checks[c.name].enabled]


def all_checks(ctx: HealthContext) -> list[HealthCheck]:
    """The checks of the configured families and the custom ones, none disabled yet;
    PluginError when two share a name (a custom check named like a built-in one)."""
    cfg = ctx.config
    explicit = "families" in cfg.model_fields_set
    families = list(cfg.families)
    if cfg.custom and "custom" not in families:
        families.append("custom")
    checks: list[HealthCheck] = []
    for family in families:
        try:
            factory = load_factory(GROUP, family)
            made: list[HealthCheck] = factory(ctx)
        except PluginError:
            if explicit or family == "custom":
                raise
            log.info("health family %s not available", family)
            continue
        checks.extend(made)
    names = [c.name for c in checks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PluginError(f"two health checks share the name(s) {', '.join(dup)}")
    return checks


def unknown_overrides(ctx: HealthContext, checks: list[HealthCheck]) -> list[str]:
    """Names under ``health.checks`` that no check has (a typo overrides nothing)."""
    return sorted(set(ctx.config.checks) - {c.name for c in checks})
