"""The scheduler built from the config, for the agent and for `swarm-maint jobs`."""

from __future__ import annotations

from collections.abc import Callable

from ..health.check import FrameSamples
from .builtin import JobContext, build_jobs
from .cron import CronSpec, resolve_timezone
from .lease import Lease
from .scheduler import Scheduler
from .windows import UsageGate, Window, Windows

__all__ = ["build_scheduler", "gpu_utilization", "lease_for"]


def gpu_utilization(frame: FrameSamples) -> float | None:
    """The busiest GPU's utilization (0..1) in a metrics frame; None without GPUs."""
    values = [v for _, v in frame.get("swarm_gpu_utilization_ratio")]
    return max(values) if values else None


def lease_for(ctx: JobContext) -> Lease:
    return Lease(ctx.store, ctx.clock, ctx.cfg.schedule.lease_ttl)


def build_scheduler(ctx: JobContext, *,
                    utilization: Callable[[], float | None] | None = None,
                    inline: bool = False) -> Scheduler:
    sc = ctx.cfg.schedule
    tz = resolve_timezone(sc.timezone)
    windows = Windows([Window(CronSpec(w.start, tz), w.duration) for w in sc.windows])
    return Scheduler(build_jobs(ctx), ctx.store, ctx.clock, windows=windows,
                     gate=UsageGate(sc.low_usage_threshold, sc.low_usage_for),
                     lease=lease_for(ctx), node_name=ctx.cfg.agent.resolved_node_name(),
                     start_delay=sc.start_delay, lease_wait=sc.lease_wait,
                     utilization=utilization, inline=inline)
