"""The update system built from the config: plan, apply, resume, history.

The CLI and the agent both go through ``UpdateService``; it builds the managed
environments (apt on this system or on ``--root``, and each pip environment), the policy,
the runbook with its config snapshot, drainer and health gate.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ..alerts.maintenance import Maintenance
from ..clock import Clock, SystemClock
from ..config import Config
from ..health.check import CheckResult
from ..store import Store
from .drain import build_drainer
from .errors import UpdateError
from .history import RunRecord, UpdateHistory
from .packages.apt import AptManager
from .packages.pip import PipManager
from .policy import Mode, PlanItem, Policy, SeenVersions, Target, make_plan
from .runbook import Runbook, RunbookContext, lock_busy

__all__ = ["UpdateService", "build_targets"]


def build_targets(cfg: Config, root: Path | None) -> list[Target]:
    u = cfg.updates
    targets = []
    if u.apt and (root is not None or shutil.which("apt-get")):
        targets.append(Target("apt", AptManager(root), tuple(u.holds)))
    for env in u.pip:
        mgr = PipManager(Path(env.python).expanduser(), index_url=env.index_url,
                         find_links=env.find_links)
        targets.append(Target(env.name, mgr, tuple(env.holds)))
    return targets


class UpdateService:
    def __init__(self, cfg: Config, store: Store, *, clock: Clock | None = None,
                 root: Path | None = None, config_file: Path | None = None,
                 maintenance: Maintenance | None = None,
                 gate: Callable[[], list[CheckResult]] | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock or SystemClock()
        self.history = UpdateHistory(store)
        self.config_file = config_file
        self.maintenance = maintenance or Maintenance(
            store, self.clock, cfg.alerts.maintenance_expected, cfg.alerts.maintenance_grace)
        self._gate = gate or self._health_gate
        if root is None and cfg.updates.root:
            root = Path(cfg.updates.root)
        pending = self.history.unfinished()
        if root is None and pending is not None and pending.state.get("root"):
            root = Path(pending.state["root"])  # resume where the cut-off run worked
        self.root = root.resolve() if root is not None else None
        self.targets = build_targets(cfg, self.root)
        self.policy = Policy(cfg.updates, self.root)
        self.on_step: list[Callable[[str, str, str], None]] = []

    # -- reading ----------------------------------------------------------------------------

    def plan(self, mode: Mode = "routine", *, allow_disruptive: bool = True,
             refresh: bool = True) -> list[PlanItem]:
        if not self.targets:
            raise UpdateError("nothing to update: apt-get is not installed and no pip "
                              "environment is configured (updates.pip)")
        return make_plan(self.targets, self.policy, SeenVersions(self.store),
                         self.clock.time(), mode, allow_disruptive=allow_disruptive,
                         refresh=refresh)

    # -- changing ---------------------------------------------------------------------------

    def check_no_unfinished_run(self) -> None:
        """A run that was cut off must be finished before anything else changes."""
        pending = self.history.unfinished()
        if pending is None:
            return
        if lock_busy(self._lock_path):
            raise UpdateError(f"update run {pending.id} is running now; wait for it "
                              "(`swarm-maint update history`)")
        raise UpdateError(f"update run {pending.id} was cut off ({pending.status}); "
                          "finish it first with `swarm-maint update resume`")

    @property
    def _lock_path(self) -> Path:
        return self.cfg.agent.resolved_state_dir() / "updates.lock"

    def apply(self, items: list[PlanItem], mode: Mode, *, trigger: str = "cli",
              may_reboot: bool = True, take_pending_reboot: bool = False) -> RunRecord:
        """Run the runbook for the selected ``items`` (skipped ones are ignored).
        ``take_pending_reboot``: also reboot for requests made before this run."""
        selected = [i for i in items if i.selected]
        if not selected:
            raise UpdateError("nothing selected to update")
        root = str(self.root) if self.root is not None else ""
        return self._runbook().start(selected, mode, trigger, may_reboot=may_reboot,
                                     extra_state={"root": root,
                                                  "take_pending_reboot": take_pending_reboot})

    def pending_reboot(self) -> list[str]:
        """Packages of this node that asked for a reboot nobody took yet (a security patch
        applied without one); empty for an image root."""
        if self.root is not None and not self.cfg.updates.root_is_live:
            return []
        return sorted({p for t in self.targets for p in t.manager.reboot_required()})

    def take_pending_reboot(self, *, trigger: str = "schedule") -> RunRecord:
        """A run with nothing to install that drains, reboots, gates and undrains."""
        root = str(self.root) if self.root is not None else ""
        return self._runbook().start([], "routine", trigger,
                                     extra_state={"root": root, "take_pending_reboot": True})

    def resume(self) -> RunRecord | None:
        return self._runbook().resume()

    # -- parts of the runbook ---------------------------------------------------------------

    def _runbook(self) -> Runbook:
        return Runbook(RunbookContext(
            cfg=self.cfg.updates, history=self.history, clock=self.clock,
            targets=self.targets, drainer=build_drainer(self.cfg.updates),
            snapshot=self._snapshot, restore=self._restore, gate=self._gate,
            lock_path=self._lock_path, maintenance=self.maintenance,
            alternate_root=self.root is not None, node_name=self.cfg.agent.resolved_node_name(),
            on_step=self.on_step))

    def _snapshot_paths(self) -> list[str]:
        from ..backup.config_snapshots import snapshot_paths

        if self.root is None:
            return snapshot_paths(self.cfg, self.config_file)
        # an alternate root: its own configuration, not this system's
        inside = [str(self.root / p.lstrip("/")) for p in self.cfg.backup.config_snapshots.paths
                  if p.startswith("/")]
        return snapshot_paths(self.cfg, None, only=inside)

    def _snapshot(self) -> str:
        from ..backup.config_snapshots import create_config_snapshot, open_config_repo

        paths = self._snapshot_paths()
        if not paths:
            raise UpdateError("config snapshot: none of backup.config_snapshots.paths exists")
        res = create_config_snapshot(open_config_repo(self.cfg), paths, reason="pre-update")
        return res.snapshot_id

    def _restore(self, snapshot_id: str) -> str:
        from ..backup.config_snapshots import open_config_repo, restore_config_snapshot

        res = restore_config_snapshot(open_config_repo(self.cfg), snapshot_id)
        if res.errors:
            raise UpdateError(f"config restore: {len(res.errors)} file(s) not restored, "
                              f"first {res.errors[0].get('path')}: {res.errors[0].get('error')}")
        return f"{len(res.written)} files put back from config snapshot {snapshot_id[:16]}"

    def _health_gate(self) -> list[CheckResult]:
        """The node's health checks, on a fresh reading (the driver may have changed)."""
        if not self.cfg.health.enabled:
            return []
        from ..health.check import FrameSamples
        from ..health.service import build_health
        from ..monitoring.oneshot import local_hub

        hub = local_hub(self.cfg)
        try:
            frame = FrameSamples(hub.latest())
            svc = build_health(self.cfg, lambda: frame, self.store, self.clock,
                               nvml_events=False)
            try:
                if svc.xids is not None:
                    svc.xids.poll()
                return svc.runner.run_now()
            finally:
                svc.close()
        finally:
            hub.close()
