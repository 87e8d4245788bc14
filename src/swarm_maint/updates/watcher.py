"""Security patches "as needed": the agent's side of the update system.

On each run of the ``security-updates`` job (hourly by default, see docs/schedule.md) the
agent refreshes the package indexes and plans a security run. Non-disruptive security
updates are applied at once (no drain, no reboot: one asked for is left to the next
window); disruptive ones wait for the weekly ``system-updates`` job in a maintenance
window. A run that was cut off (a crash, a reboot) is resumed first, so a node that
rebooted for an update finishes it by itself after boot.

What is pending is exported for the alert rules (SecurityPatchesPending, UpdateFailed)::

    swarm_update_pending{env,security,held}          updates offered, by kind
    swarm_update_security_pending_age_seconds        how long the oldest security one waits
    swarm_update_last_check_timestamp_seconds
    swarm_update_last_run_success                    1 / 0 for the last finished run
    swarm_update_last_run_timestamp_seconds
    swarm_update_run_in_progress                     1 while a run is unfinished
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from ..alerts.maintenance import Maintenance
from ..clock import Clock
from ..config import Config
from ..monitoring.collector import CollectorStatus
from ..store import Store
from .history import UpdateHistory
from .policy import PlanItem
from .service import UpdateService

__all__ = ["SecurityWatcher"]

log = logging.getLogger(__name__)

_RUNS_TTL = 10.0


class SecurityWatcher:
    def __init__(self, cfg: Config, store: Store, clock: Clock,
                 maintenance: Maintenance | None = None,
                 config_file: Path | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.maintenance = maintenance
        self.config_file = config_file
        self.history = UpdateHistory(store)
        self._lock = threading.Lock()
        self._pending: list[PlanItem] | None = None
        self._checked: float | None = None
        self._runs: tuple[float, float | None, float | None, bool] | None = None

    def check_once(self) -> list[PlanItem]:
        """Resume a cut-off run, plan, apply what may go now; the pending plan."""
        svc = UpdateService(self.cfg, self.store, clock=self.clock,
                            maintenance=self.maintenance, config_file=self.config_file)
        if svc.history.has_unfinished():
            run = svc.resume()
            if run is not None:
                log.info("update run %d resumed: %s", run.id, run.status)
        items = svc.plan("security", allow_disruptive=False)
        selected = [i for i in items if i.selected]
        if selected and self.cfg.updates.auto_apply_security:
            log.info("applying %d security update(s): %s", len(selected),
                     ", ".join(f"{i.name} {i.candidate}" for i in selected))
            run = svc.apply(items, "security", trigger="agent", may_reboot=False)
            log.log(logging.INFO if run.status == "succeeded" else logging.ERROR,
                    "security update run %d %s%s", run.id, run.status,
                    f": {run.error}" if run.error else "")
            items = svc.plan("security", allow_disruptive=False, refresh=False)
        with self._lock:
            self._pending = items
            self._checked = self.clock.time()
            self._runs = None
        return items

    def pending(self) -> tuple[list[PlanItem] | None, float | None]:
        """The last check's plan and when it ran (None, None before the first check)."""
        with self._lock:
            return self._pending, self._checked

    # -- metrics ----------------------------------------------------------------------------

    def collector(self) -> _UpdatesCollector:
        return _UpdatesCollector(self)

    def _run_summary(self) -> tuple[float | None, float | None, bool]:
        """(last success 1/0, its end, a run unfinished), read at most every 10 s."""
        now = self.clock.monotonic()
        with self._lock:
            cached = self._runs
        if cached is None or now - cached[0] > _RUNS_TTL:
            last = self.history.last_finished()
            cached = (now, None if last is None else float(last.status == "succeeded"),
                      None if last is None else last.ended,
                      self.history.has_unfinished())
            with self._lock:
                self._runs = cached
        return cached[1], cached[2], cached[3]

    def metrics(self) -> list[Metric]:
        with self._lock:
            pending, checked = self._pending, self._checked
        out: list[Metric] = []
        if pending is not None and checked is not None:
            g = GaugeMetricFamily("swarm_update_pending", "Updates offered and not installed, "
                                  "by environment, security origin and hold.",
                                  labels=["env", "security", "held"])
            counts = Counter((i.manager, str(i.security).lower(), str(i.held).lower())
                             for i in pending)
            for labels, n in sorted(counts.items()):
                g.add_metric(list(labels), n)
            out.append(g)
            oldest = min((i.first_seen for i in pending if i.security), default=None)
            out.append(GaugeMetricFamily(
                "swarm_update_security_pending_age_seconds",
                "How long the oldest pending security update has been offered (0: none).",
                value=0.0 if oldest is None else max(0.0, self.clock.time() - oldest)))
            out.append(GaugeMetricFamily("swarm_update_last_check_timestamp_seconds",
                                         "When the agent last looked for updates.",
                                         value=checked))
        success, ended, unfinished = self._run_summary()
        if success is not None:
            out.append(GaugeMetricFamily("swarm_update_last_run_success",
                                         "1 when the last finished update run succeeded, "
                                         "0 when it failed (and was rolled back).",
                                         value=success))
            out.append(GaugeMetricFamily("swarm_update_last_run_timestamp_seconds",
                                         "When the last update run finished.",
                                         value=ended or 0.0))
        out.append(GaugeMetricFamily("swarm_update_run_in_progress",
                                     "1 while an update run is unfinished (running, cut "
                                     "off, or waiting for a reboot).",
                                     value=float(unfinished)))
        return out


class _UpdatesCollector:
    name = "updates"

    def __init__(self, watcher: SecurityWatcher) -> None:
        self._watcher = watcher

    def collect(self) -> list[Metric]:
        return self._watcher.metrics()

    def status(self) -> CollectorStatus:
        return CollectorStatus()

    def close(self) -> None:
        pass
