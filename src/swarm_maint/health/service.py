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


def build_health(cfg: Config, frame: Callable[[], FrameSamples], store: Store | None,
                 clock: Clock | None = None) -> HealthService:
    from .xid import XidTracker, open_source

    clock = clock or SystemClock()
    hc = cfg.health
    ctx = HealthContext(config=hc, frame=frame, proc_root=Path(cfg.monitoring.proc_root),
                        sys_root=Path(cfg.monitoring.sys_root), clock=clock)
    tracker = None
    if store is not None:
        try:
            tracker = XidTracker(store, open_source(hc.kernel_log), clock, hc.xid_window)
        except Exception as exc:  # unreadable /dev/kmsg, no journalctl …: say so, go on
            ctx.extras["kernel_log_error"] = f"{hc.kernel_log}: {exc}"
            log.warning("kernel log %s unavailable: %s", hc.kernel_log, exc)
    ctx.xids = tracker
    runner = HealthRunner(build_checks(ctx), hc, store, clock)
    if tracker is not None:
        tracker.on_events = lambda _events: runner.trigger("gpu_xid")
    return HealthService(runner, ctx, tracker)
