"""The update runbook of one node: a persisted state machine, resumable after a crash.

Forward steps, each recorded in ``update_steps`` before and after it runs::

    repair    dpkg --audit; finish an interrupted dpkg run before anything else
    record    installed versions of every managed environment, and the health baseline
    snapshot  a configuration snapshot (reason pre-update)
    drain     only when a selected update is disruptive: a maintenance window holding the
              expected alerts, then the Drainer
    apply     install the selected versions, non-interactively, keeping config files
    restart   reboot when one is needed (and resume after boot), else reload the driver
              (driver updates) and restart the services of updated packages
    gate      the health checks; a check that got to gate_fail_on (and was not there
              before) fails the run; a driver update also needs kernel module == NVML
    undrain   back in service, the maintenance window ends

On a failure the run switches to the recovery steps: ``rollback`` (every package of every
environment back to its recorded version, packages the run added removed), ``restore``
(the configuration snapshot put back), ``out-of-service`` (the node stays drained, the
window ends so alerts flow) and ends ``failed``; the agent exports that and UpdateFailed
fires. Every step is idempotent, so a run cut off at any instant is continued by
re-running its first unfinished step.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..alerts.maintenance import Maintenance
from ..clock import Clock
from ..config import UpdatesConfig
from ..health.check import CheckResult
from .commands import run_command
from .drain import Drainer
from .errors import PackageError, UpdateError
from .history import RunRecord, UpdateHistory
from .policy import Mode, PlanItem, Target, units_of

__all__ = ["FORWARD", "RECOVERY", "Runbook", "RunbookContext", "lock_busy"]

log = logging.getLogger(__name__)

FORWARD = ("repair", "record", "snapshot", "drain", "apply", "restart", "gate", "undrain")
RECOVERY = ("rollback", "restore", "out-of-service")
_SEVERITY = {"OK": 0, "UNKNOWN": 0, "WARNING": 1, "CRITICAL": 2}


class _Rebooting(Exception):
    """The node is rebooting; the run continues after boot."""


@dataclass
class RunbookContext:
    """Everything a runbook touches, injectable for tests."""

    cfg: UpdatesConfig
    history: UpdateHistory
    clock: Clock
    targets: Sequence[Target]
    drainer: Drainer
    snapshot: Callable[[], str]             # takes a config snapshot, returns its id
    restore: Callable[[str], str]           # restores one, returns what it did
    gate: Callable[[], list[CheckResult]]   # runs the health checks now
    lock_path: Path
    maintenance: Maintenance | None = None
    alternate_root: bool = False            # services of an image are not running here
    sleep: Callable[[float], None] = time.sleep
    node_name: str = ""
    on_step: list[Callable[[str, str, str], None]] = field(default_factory=list)


class Runbook:
    def __init__(self, ctx: RunbookContext) -> None:
        self.ctx = ctx
        self._targets = {t.label: t for t in ctx.targets}

    # -- entry points -----------------------------------------------------------------------

    def start(self, items: list[PlanItem], mode: Mode, trigger: str, *,
              may_reboot: bool = True,
              extra_state: dict[str, object] | None = None) -> RunRecord:
        """Record a new run of the selected ``items`` and execute it.

        ``may_reboot`` False (the agent's immediate security patches) leaves a reboot that
        an update asks for to the next maintenance window instead of taking it now.
        """
        with self._locked():
            pending = self.ctx.history.unfinished()
            if pending is not None:
                raise UpdateError(f"update run {pending.id} was cut off ({pending.status}); "
                                  "finish it first with `swarm-maint update resume`")
            run_id = self.ctx.history.create(items, mode, trigger, self.ctx.clock.time())
            self.ctx.history.save_state(run_id, {"may_reboot": may_reboot, **(extra_state or {})})
            return self._execute(run_id)

    def resume(self) -> RunRecord | None:
        """Continue the run that was cut off (None when there is none)."""
        with self._locked():
            run = self.ctx.history.unfinished()
            if run is None:
                return None
            log.info("resuming update run %d (%s)", run.id, run.status)
            return self._execute(run.id)

    # -- the machine ------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.ctx.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.ctx.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                raise UpdateError(f"another update is running (pid {holder or '?'}); "
                                  "wait for it or see `swarm-maint update history`") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _execute(self, run_id: int) -> RunRecord:
        hist = self.ctx.history
        while True:
            run = hist.get(run_id)
            assert run is not None
            recovering = "failure" in run.state
            plan = RECOVERY if recovering else FORWARD
            finished = {s.step for s in run.steps if s.status in ("done", "skipped")}
            # a recovery step that failed is not retried forever: it is reported and passed
            if recovering:
                finished |= {s.step for s in run.steps if s.status == "failed"
                             and s.step in RECOVERY}
            step = next((s for s in plan if s not in finished), None)
            if step is None:
                return self._finish(run, recovering)
            seq = hist.begin_step(run_id, step, self.ctx.clock.time())
            self._notify(step, "running", "")
            try:
                status, detail = getattr(self, "_" + step.replace("-", "_"))(run)
            except _Rebooting as exc:
                hist.end_step(run_id, seq, "waiting", str(exc), self.ctx.clock.time())
                hist.save_state(run_id, run.state, status="awaiting-reboot")
                self._notify(step, "waiting", str(exc))
                return hist.get(run_id) or run
            except Exception as exc:
                detail = str(exc) or type(exc).__name__
                if not isinstance(exc, UpdateError):
                    log.exception("update step %s failed", step)
                hist.end_step(run_id, seq, "failed", detail, self.ctx.clock.time())
                self._notify(step, "failed", detail)
                if not recovering:
                    run.state["failure"] = {"step": step, "error": detail}
                else:
                    run.state.setdefault("recovery_errors", []).append(f"{step}: {detail}")
                hist.save_state(run_id, run.state, status="running")
                continue
            hist.save_state(run_id, run.state, status="running")
            hist.end_step(run_id, seq, status, detail, self.ctx.clock.time())
            self._notify(step, status, detail)

    def _finish(self, run: RunRecord, failed: bool) -> RunRecord:
        error = None
        if failed:
            f = run.state["failure"]
            error = f"{f['step']} failed: {f['error']}"
            if run.state.get("recovery_errors"):
                error += "; recovery incomplete: " + "; ".join(run.state["recovery_errors"])
        self.ctx.history.finish(run.id, "failed" if failed else "succeeded", error,
                                self.ctx.clock.time())
        done = self.ctx.history.get(run.id)
        assert done is not None
        return done

    def _notify(self, step: str, status: str, detail: str) -> None:
        for hook in self.ctx.on_step:
            hook(step, status, detail)

    # -- forward steps: each returns (status, detail) ---------------------------------------

    def _repair(self, run: RunRecord) -> tuple[str, str]:
        notes = []
        for t in self.ctx.targets:
            problems = t.manager.audit()
            if problems:
                t.manager.repair()
                notes.append(f"{t.label}: repaired an interrupted run "
                              f"({problems.splitlines()[0][:120]})")
        return ("done", "; ".join(notes)) if notes else ("skipped", "package database sound")

    def _record(self, run: RunRecord) -> tuple[str, str]:
        versions = {label: self._targets[label].manager.installed()
                    for label in self._labels(run)}
        run.state["recorded"] = versions
        run.state["reboot_before"] = self._reboot_requests(run)
        run.state["baseline"] = {} if self._offline else \
            {r.check: r.status for r in self.ctx.gate()}
        n = sum(len(v) for v in versions.values())
        return "done", f"{n} installed versions recorded; health baseline of " \
                       f"{len(run.state['baseline'])} checks"

    def _snapshot(self, run: RunRecord) -> tuple[str, str]:
        sid = self.ctx.snapshot()
        run.state["snapshot"] = sid
        return "done", f"config snapshot {sid[:16]}"

    @property
    def _offline(self) -> bool:
        """An image or a chroot: nothing of this host is drained, rebooted or judged."""
        return self.ctx.alternate_root and not self.ctx.cfg.root_is_live

    def _drain(self, run: RunRecord) -> tuple[str, str]:
        disruptive = [i for i in run.items if i.disruptive]
        if not disruptive and run.mode != "driver":
            return "skipped", "no disruptive update"
        if self._offline:
            return "skipped", "alternate root: no running workload to drain"
        why = ", ".join(f"{i.name} ({i.disruption})" for i in disruptive[:5]) or "driver"
        return "done", self._take_out_of_service(run, why)

    def _take_out_of_service(self, run: RunRecord, why: str) -> str:
        """Open the maintenance window, then drain (each once, even across a resume)."""
        notes = []
        if self.ctx.maintenance is not None and "window" not in run.state:
            w = self.ctx.maintenance.begin(f"update run {run.id}: {why}",
                                           self.ctx.cfg.max_duration)
            run.state["window"] = w.id
            self.ctx.history.save_state(run.id, run.state)
            notes.append(f"maintenance window {w.id}")
        run.state["drained"] = True
        self.ctx.history.save_state(run.id, run.state)
        notes.append(self.ctx.drainer.drain(f"update run {run.id}: {why}"))
        return "; ".join(notes)

    def _apply(self, run: RunRecord) -> tuple[str, str]:
        if not run.items:
            return "skipped", "nothing to install: this run takes a pending reboot"
        done = []
        for label in self._labels(run):
            versions = {i.name: i.candidate for i in run.items if i.manager == label}
            mgr = self._targets[label].manager
            if mgr.audit():  # this step was cut off mid-install before: finish that first
                mgr.repair()
                done.append(f"{label}: repaired the interrupted install")
            mgr.install(versions)
            done.append(f"{label}: " + ", ".join(f"{n} {v}" for n, v in sorted(versions.items())))
        return "done", "; ".join(done)

    def _restart(self, run: RunRecord) -> tuple[str, str]:
        cfg = self.ctx.cfg
        # a run that takes a pending reboot (one an earlier security patch left) counts
        # the requests it found at the start too
        before = (set() if run.state.get("take_pending_reboot")
                  else set(run.state.get("reboot_before", [])))
        asked = [p for p in self._reboot_requests(run) if p not in before]
        predicted = sorted(i.name for i in run.items if i.disruption == "reboot")
        needed = ", ".join(asked or predicted)
        notes = []
        old = run.state.get("reboot_boot_id")
        if old is not None and not self._offline:
            # back after the reboot this run took (/run, and with it the request, is gone)
            boot = _boot_id(cfg.boot_id_file)
            if boot != old:
                return "done", f"rebooted (boot id {old[:8]} → {boot[:8]})"
        if needed and self._offline:
            return "done", f"reboot needed by {needed} inside the alternate root; this " \
                           "host is not rebooted"
        if self._offline:
            return "skipped", "alternate root: no driver or service to restart here"
        if needed and not run.state.get("may_reboot", True):
            notes.append(f"reboot needed by {needed}; left for the next maintenance window")
        elif needed and cfg.reboot == "never":
            notes.append(f"reboot needed by {needed}; not rebooting (updates.reboot = never)")
        elif needed:
            boot = _boot_id(cfg.boot_id_file)
            if not run.state.get("drained"):
                # a reboot nobody predicted: workloads leave first all the same
                notes.append(self._take_out_of_service(run, "reboot required"))
            run.state["reboot_boot_id"] = boot
            self.ctx.history.save_state(run.id, run.state)
            run_command(cfg.reboot_command, "reboot")
            raise _Rebooting("; ".join([*notes, f"rebooting for {needed}; the run continues "
                                        "after boot"]))
        if run.mode == "driver" or any(i.disruption == "driver-reload" for i in run.items):
            run_command(cfg.driver_reload_command, "driver reload")
            notes.append(f"driver reloaded: {' '.join(cfg.driver_reload_command)}")
        units = sorted({u for i in run.items for u in self._units_now(i)})
        if units:
            run_command([*cfg.restart_command, *units], "restart services")
            notes.append(f"restarted {', '.join(units)}")
        return ("done", "; ".join(notes)) if notes else ("skipped", "nothing to restart")

    def _gate(self, run: RunRecord) -> tuple[str, str]:
        if self._offline:
            return "skipped", "alternate root: this host's health says nothing about it"
        if self.ctx.cfg.gate_settle > 0:
            self.ctx.sleep(self.ctx.cfg.gate_settle)
        results = self.ctx.gate()
        limit = _SEVERITY[self.ctx.cfg.gate_fail_on]
        baseline = run.state.get("baseline", {})
        bad = [r for r in results if _SEVERITY[r.status] >= limit
               and _SEVERITY.get(baseline.get(r.check, "OK"), 0) < _SEVERITY[r.status]]
        if run.mode == "driver":
            drv = next((r for r in results if r.check == "gpu_driver"), None)
            module = drv.details.get("kernel_module") if drv is not None else None
            if drv is None or drv.status != "OK" or not module \
                    or module != drv.details.get("library"):
                why = drv.message if drv is not None else "the gpu_driver check did not run"
                raise UpdateError(f"driver check after the driver update: {why}")
        if bad:
            raise UpdateError("health gate: " + "; ".join(
                f"{r.check} {r.status}: {r.message}" for r in bad))
        return "done", f"{len(results)} checks, none worse than {self.ctx.cfg.gate_fail_on}"

    def _undrain(self, run: RunRecord) -> tuple[str, str]:
        notes = []
        if run.state.get("drained"):
            notes.append(self.ctx.drainer.undrain())
            run.state["drained"] = False
        self._end_window(run, notes)
        return ("done", "; ".join(notes)) if notes else ("skipped", "was not drained")

    # -- recovery steps ---------------------------------------------------------------------

    def _rollback(self, run: RunRecord) -> tuple[str, str]:
        recorded: dict[str, dict[str, str]] = run.state.get("recorded", {})
        if not recorded:
            return "skipped", "nothing was changed (failed before versions were recorded)"
        notes = []
        for label, before in recorded.items():
            mgr = self._targets[label].manager
            if mgr.audit():
                try:
                    mgr.repair()
                except PackageError as exc:
                    notes.append(f"{label}: repair failed ({exc}); reinstalling")
            now = mgr.installed()
            back = {n: v for n, v in before.items() if now.get(n) != v}
            added = sorted(n for n in now if n not in before)
            mgr.install(back)
            mgr.remove(added)
            if mgr.audit():
                raise UpdateError(f"{label}: package database still inconsistent after "
                                  "rollback")
            if back or added:
                notes.append(f"{label}: " + ", ".join(
                    [f"{n} → {v}" for n, v in sorted(back.items())]
                    + [f"{n} removed" for n in added]))
        return ("done", "; ".join(notes)) if notes else ("skipped", "no package had changed")

    def _restore(self, run: RunRecord) -> tuple[str, str]:
        sid = run.state.get("snapshot")
        if not sid or "apply" not in {s.step for s in run.steps}:
            return "skipped", "configuration untouched (failed before apply)"
        return "done", self.ctx.restore(sid)

    def _out_of_service(self, run: RunRecord) -> tuple[str, str]:
        notes = []
        if "apply" not in {s.step for s in run.steps} and run.state.get("drained"):
            # nothing was installed: the node is as it was, so it may serve again
            notes.append(self.ctx.drainer.undrain())
            run.state["drained"] = False
        elif run.state.get("drained"):
            notes.append("node kept out of service (drained) until a person looks")
        self._end_window(run, notes)
        return "done", "; ".join(notes) or "node was not drained"

    # -- helpers ----------------------------------------------------------------------------

    def _labels(self, run: RunRecord) -> list[str]:
        labels = sorted({i.manager for i in run.items})
        missing = [x for x in labels if x not in self._targets]
        if missing:
            raise UpdateError(f"environment {', '.join(missing)} of this run is no longer "
                              "configured")
        return labels

    def _units_now(self, item: PlanItem) -> list[str]:
        target = self._targets.get(item.manager)
        return units_of(target.manager, item.name) if target is not None else []

    def _reboot_requests(self, run: RunRecord) -> list[str]:
        labels = (list(self._targets) if run.state.get("take_pending_reboot")
                  else self._labels(run))
        return sorted({p for label in labels
                       for p in self._targets[label].manager.reboot_required()})

    def _end_window(self, run: RunRecord, notes: list[str]) -> None:
        wid = run.state.pop("window", None)
        if wid and self.ctx.maintenance is not None:
            self.ctx.maintenance.end(wid)
            notes.append(f"maintenance window {wid} ended")


def lock_busy(path: Path) -> bool:
    """Whether a runbook holds the update lock now (in any process)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _boot_id(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise UpdateError(f"{path}: cannot read the boot id: {exc.strerror}") from None

