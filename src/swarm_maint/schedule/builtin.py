"""The Swarm maintenance schedule as jobs, built from the config.

| job               | default schedule | lease | window | what it does                        |
| ----------------- | ---------------- | ----- | ------ | ----------------------------------- |
| health            | hourly           | no    | no     | the full passive health suite       |
| diagnostics       | Sunday 04:00     | yes   | yes    | active GPU diagnostics (level 2)    |
| config-snapshot   | every 6 hours    | yes   | no     | snapshot of system/workload config  |
| backup:NAME       | its own (daily)  | yes   | no     | one ``[[backup.jobs]]`` entry       |
| backup-verify     | Sunday 05:00     | yes   | no     | verify every repository             |
| backup-retention  | daily 04:30      | yes   | no     | forget + prune by keep policy       |
| security-updates  | hourly           | yes   | no     | non-disruptive security patches     |
| system-updates    | Sunday 02:00     | yes   | yes    | the weekly routine update runbook   |
|                   |                  |       |        | (and a reboot patches left pending) |
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..alerts.maintenance import Maintenance
from ..clock import Clock
from ..config import Config, JobOverride
from ..errors import ConfigError
from ..health.check import CheckResult
from ..health.runner import HealthRunner
from ..store import Store
from .backup_jobs import backup_job, retention, verify_all
from .child import backup_in_child, in_child
from .cron import CronSpec, resolve_timezone
from .job import Job, JobOutcome, JobRun

__all__ = ["DEFAULT_SCHEDULES", "JobContext", "build_jobs"]

log = logging.getLogger(__name__)

DEFAULT_SCHEDULES = {
    "health": "0 * * * *",
    "diagnostics": "0 4 * * 0",
    "config-snapshot": "0 */6 * * *",
    "backup-verify": "0 5 * * 0",
    "backup-retention": "30 4 * * *",
    "security-updates": "0 * * * *",
    "system-updates": "0 2 * * 0",
}


# who gets the lease first when several runs wait for it
_PRIORITY = {"updates": 10, "health": 20, "config-snapshot": 30, "backup": 40,
             "backup-retention": 50, "backup-verify": 60}


@dataclass
class JobContext:
    """What the jobs need from the agent (or, for `jobs run`, from a one-shot build)."""

    cfg: Config
    store: Store
    clock: Clock
    config_file: Path | None = None
    health: Callable[[], contextlib.AbstractContextManager[HealthRunner]] | None = None
    idle: Callable[[], tuple[bool, str]] | None = None
    maintenance: Maintenance | None = None
    security_check: Callable[[], Any] | None = None  # the agent's SecurityWatcher.check_once
    # the agent runs backups in a child process (schedule/child.py); `jobs run` is a
    # process of its own already
    isolate_backups: bool = False


def _summary(results: list[CheckResult]) -> tuple[str, dict[str, Any]]:
    counts: Counter[str] = Counter(r.status for r in results)
    order = ("CRITICAL", "WARNING", "UNKNOWN", "OK")
    text = ", ".join(f"{counts[s]} {s}" for s in order if counts[s]) or "no checks"
    bad = [r for r in results if r.status in ("CRITICAL", "WARNING")]
    if bad:
        text += " (" + "; ".join(f"{r.check}: {r.message}" for r in bad[:3]) + ")"
    # the history keeps what needs attention; OK results are only counted
    return text, {"counts": dict(counts),
                  "results": [r.to_dict() for r in results if r.status != "OK"]}


def _health(ctx: JobContext, run: JobRun) -> JobOutcome:
    assert ctx.health is not None
    with ctx.health() as runner:
        results = runner.run_now(level=1)
    text, details = _summary(results)
    return JobOutcome("succeeded", text, details)


def _diagnostics(ctx: JobContext, run: JobRun) -> JobOutcome:
    assert ctx.health is not None
    with ctx.health() as runner:
        names = [n for n, c in runner.checks.items() if c.level >= 2]
        if not names:
            return JobOutcome("skipped", "no active diagnostics configured")
        results = runner.run_now(names, level=2, idle=ctx.idle)
    text, details = _summary(results)
    if all(r.details.get("skipped") for r in results):
        return JobOutcome("skipped", text, details)
    return JobOutcome("succeeded", text, details)


def config_snapshot(cfg: Config, config_file: Path | None) -> JobOutcome:
    from ..backup.config_snapshots import (
        create_config_snapshot,
        open_config_repo,
        snapshot_paths,
    )

    paths = snapshot_paths(cfg, config_file)
    if not paths:
        return JobOutcome("failed", "none of backup.config_snapshots.paths exists")
    res = create_config_snapshot(open_config_repo(cfg), paths, reason="periodic")
    text = (f"config snapshot {res.snapshot_id[:12]}: {res.files} files, "
            f"{res.added_bytes / 1024:.1f} KiB added")
    if res.partial:
        text += f"; {len(res.errors)} file(s) could not be read"
    return JobOutcome("succeeded", text, {"snapshot": res.snapshot_id, "files": res.files,
                                          "paths": paths})


def not_root(cfg: Config, euid: int | None = None) -> JobOutcome | None:
    """apt on this system needs root; say so instead of failing every hour."""
    u = cfg.updates
    euid = os.geteuid() if euid is None else euid
    if euid == 0 or not u.apt or u.root or u.pip or not shutil.which("apt-get"):
        return None
    return JobOutcome("skipped", "package updates need root: run the agent as root "
                      "(docs/deploy.md) or set updates.enabled = false")


def _security_updates(ctx: JobContext, run: JobRun) -> JobOutcome:
    from ..updates.history import UpdateHistory

    if (skip := not_root(ctx.cfg)) is not None:
        return skip

    hist = UpdateHistory(ctx.store)
    before = max((r.id for r in hist.runs(limit=1)), default=0)
    if ctx.security_check is not None:
        items = ctx.security_check()
    else:  # `jobs run` without the agent: the same check, in this process
        from ..updates.watcher import SecurityWatcher

        items = SecurityWatcher(ctx.cfg, ctx.store, ctx.clock, ctx.maintenance,
                                ctx.config_file).check_once()
    runs = [r for r in hist.runs(limit=5) if r.id > before]
    waiting = [i for i in items if i.security and not i.held]
    pending = (f"{len(waiting)} security update(s) still pending" if waiting
               else "no security updates pending")
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        return JobOutcome("failed", f"security update run {failed[0].id} failed: "
                          f"{failed[0].error}; {pending}", {"runs": [r.id for r in runs]})
    done = sum(len(r.items) for r in runs)
    text = (f"{done} security update(s) applied; " if done else "") + pending
    return JobOutcome("succeeded", text, {"runs": [r.id for r in runs],
                                          "pending": len(waiting)})


def _system_updates(ctx: JobContext, run: JobRun) -> JobOutcome:
    from ..updates.service import UpdateService

    if (skip := not_root(ctx.cfg)) is not None:
        return skip
    svc = UpdateService(ctx.cfg, ctx.store, clock=ctx.clock, maintenance=ctx.maintenance,
                        config_file=ctx.config_file)
    if svc.history.has_unfinished():
        resumed = svc.resume()
        if resumed is not None and resumed.status == "failed":
            return JobOutcome("failed", f"update run {resumed.id} (resumed) failed: "
                              f"{resumed.error}", {"run": resumed.id})
    items = svc.plan("routine")
    selected = [i for i in items if i.selected]
    # a reboot a security patch asked for (and the agent did not take) is taken here,
    # in the window, drained and gated like any disruptive update
    pending = svc.pending_reboot() if ctx.cfg.updates.reboot == "auto" else []
    if not selected and pending:
        rec = svc.take_pending_reboot()
        text = f"update run {rec.id} {rec.status}: reboot asked for by {', '.join(pending)}"
        if rec.status == "failed":
            return JobOutcome("failed", f"{text}: {rec.error}", {"run": rec.id})
        return JobOutcome("succeeded", text, {"run": rec.id, "reboot_for": pending})
    if not selected:
        return JobOutcome("succeeded", f"nothing to update ({len(items)} offered, none "
                          "selected)", {"offered": len(items)})
    rec = svc.apply(items, "routine", trigger="schedule", take_pending_reboot=bool(pending))
    text = (f"update run {rec.id} {rec.status}: "
            + ", ".join(f"{i.name} {i.candidate}" for i in selected[:5])
            + (f" and {len(selected) - 5} more" if len(selected) > 5 else ""))
    if rec.status == "failed":
        return JobOutcome("failed", f"{text}: {rec.error}", {"run": rec.id})
    return JobOutcome("succeeded", text, {"run": rec.id, "packages": len(selected)})


def _update_run_unfinished(ctx: JobContext) -> bool:
    from ..updates.history import UpdateHistory

    return UpdateHistory(ctx.store).has_unfinished()


def build_jobs(ctx: JobContext) -> list[Job]:
    """Every job of the schedule, with the config's overrides applied."""
    cfg = ctx.cfg
    sc = cfg.schedule
    tz = resolve_timezone(sc.timezone)

    def make(name: str, kind: str, description: str, schedule: str,
             action: Callable[[JobRun], JobOutcome], *, lease: bool = True,
             window: bool = False, enabled: bool = True, **extra: Any) -> Job:
        extra.setdefault("priority", _PRIORITY.get(kind, 50))
        o = sc.jobs.get(name) or JobOverride()
        expr = o.schedule or schedule
        try:
            spec = CronSpec(expr, tz)
        except ValueError as exc:
            raise ConfigError(f"schedule of job {name}: {exc}") from None
        return Job(name=name, kind=kind, description=description, schedule=spec,
                   action=action, enabled=enabled and o.enabled,
                   jitter=sc.jitter if o.jitter is None else o.jitter, lease=lease,
                   window=window if o.window is None else o.window,
                   retries=sc.retries if o.retries is None else o.retries,
                   retry_backoff=sc.retry_backoff, **extra)

    jobs: list[Job] = []
    if cfg.health.enabled and ctx.health is not None:
        jobs.append(make("health", "health", "full passive health suite",
                         DEFAULT_SCHEDULES["health"], lambda r: _health(ctx, r), lease=False))
        jobs.append(make("diagnostics", "health", "active GPU diagnostics (level 2)",
                         DEFAULT_SCHEDULES["diagnostics"], lambda r: _diagnostics(ctx, r),
                         window=True))
    snapshot: Callable[[JobRun], JobOutcome] = (
        functools.partial(in_child, cfg, "config-snapshot", config_file=ctx.config_file)
        if ctx.isolate_backups else lambda r: config_snapshot(cfg, ctx.config_file))
    jobs.append(make("config-snapshot", "config-snapshot",
                     "snapshot of system and workload configuration",
                     DEFAULT_SCHEDULES["config-snapshot"], snapshot))
    for bj in cfg.backup.jobs:
        job = make(f"backup:{bj.name}", "backup", "backup of " + ", ".join(bj.paths),
                   bj.schedule, functools.partial(
                       backup_in_child if ctx.isolate_backups else backup_job, cfg, bj),
                   enabled=bj.enabled, labels={"backup_job": bj.name})
        job.max_age = job.schedule.period + sc.backup_max_age_margin
        jobs.append(job)
    if cfg.backup.jobs:
        verify: Callable[[JobRun], JobOutcome] = (
            functools.partial(in_child, cfg, "verify") if ctx.isolate_backups
            else functools.partial(verify_all, cfg))
        thin: Callable[[JobRun], JobOutcome] = (
            functools.partial(in_child, cfg, "retention") if ctx.isolate_backups
            else functools.partial(retention, cfg))
        jobs.append(make("backup-verify", "backup-verify", "verify every backup repository",
                         DEFAULT_SCHEDULES["backup-verify"], verify))
        jobs.append(make("backup-retention", "backup-retention",
                         "forget and prune snapshots by each job's keep policy",
                         DEFAULT_SCHEDULES["backup-retention"], thin))
    if cfg.updates.enabled:
        sec = make("security-updates", "updates", "apply non-disruptive security patches",
                   DEFAULT_SCHEDULES["security-updates"], lambda r: _security_updates(ctx, r))
        sec.urgent_at_start = lambda: _update_run_unfinished(ctx)
        jobs.append(sec)
        jobs.append(make("system-updates", "updates", "weekly system update runbook",
                         DEFAULT_SCHEDULES["system-updates"],
                         lambda r: _system_updates(ctx, r), window=True))
    return jobs


@contextlib.contextmanager
def one_shot_health(cfg: Config, store: Store, clock: Clock) -> Iterator[HealthRunner]:
    """A health runner on a fresh reading of the node (`jobs run` outside the agent)."""
    from ..health.check import FrameSamples
    from ..health.service import build_health
    from ..monitoring.oneshot import local_hub

    hub = local_hub(cfg)
    try:
        frame = FrameSamples(hub.latest())
        svc = build_health(cfg, lambda: frame, store, clock, nvml_events=False)
        try:
            if svc.xids is not None:
                svc.xids.poll()
            yield svc.runner
        finally:
            svc.close()
    finally:
        hub.close()
