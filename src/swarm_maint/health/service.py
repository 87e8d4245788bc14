"""Wires the health subsystem from the config: kernel-log XID tracker, checks, runner."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..clock import Clock, SystemClock
from ..config import Config
from ..store import Store
from .build import build_checks
from .check import FrameSamples, HealthContext
from .runner import HealthRunner

__all__ = ["HealthService", "build_health"]

log = logging.getLogger(__name__)


@dataclass
class HealthService:
    runner: HealthRunner
    context: HealthContext
    xids: Any  # XidTracker | None

    def start_tracking(self) -> None:
        if self.xids is not None:
            self.xids.start()

    def close(self) -> None:
        self.runner.stop()
        if self.xids is not None:
            self.xids.stop()


def _xid_source(cfg: Config, clock: Clock, nvml_events: bool,
                extras: dict[str, Any]) -> Any:
    """The kernel log, plus NVML's XID events where they work; None when neither does."""
    from .nvml_events import MultiSource, NvmlXidSource
    from .xid import KernelLogError, open_source

    hc = cfg.health
    sources: list[Any] = []
    try:
        sources.append(open_source(hc.kernel_log))
    except Exception as exc:  # unreadable /dev/kmsg, no journalctl …: say so, go on
        extras["kernel_log_error"] = str(exc)
        log.warning("kernel log %s unavailable: %s", hc.kernel_log, exc)
    if nvml_events and hc.nvml_events:
        try:
            sources.append(NvmlXidSource(cfg.monitoring.nvml_library or None))
        except KernelLogError as exc:  # no GPU, no driver, or no event support
            log.debug("NVML XID events not used: %s", exc)  # expected without a GPU
    if not sources:
        return None
    return sources[0] if len(sources) == 1 else MultiSource(sources, clock=clock)


def build_health(cfg: Config, frame: Callable[[], FrameSamples], store: Store | None,
                 clock: Clock | None = None, nvml_events: bool = True) -> HealthService:
    """``nvml_events``: listen for NVML XID events too (the agent does; a one-shot
    ``health run`` would only see events raised while it runs, so it does not)."""
    from .xid import XidTracker

    clock = clock or SystemClock()
    hc = cfg.health
    ctx = HealthContext(config=hc, frame=frame, proc_root=Path(cfg.monitoring.proc_root),
                        sys_root=Path(cfg.monitoring.sys_root), clock=clock)
    tracker = None
    if store is not None:
        source = _xid_source(cfg, clock, nvml_events, ctx.extras)
        if source is not None:
            tracker = XidTracker(store, source, clock, hc.xid_window)
    ctx.xids = tracker
    runner = HealthRunner(build_checks(ctx), hc, store, clock)
    if tracker is not None:
        tracker.on_events = lambda _events: runner.trigger("gpu_xid")
    return HealthService(runner, ctx, tracker)
