"""``swarm-maint update plan|apply|history|resume``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from .common import (
    ConfigOption,
    JsonOption,
    config_path,
    effective_config,
    print_json,
    state_store,
)

if TYPE_CHECKING:
    from ..updates.history import RunRecord
    from ..updates.policy import Mode, PlanItem
    from ..updates.service import UpdateService

app = typer.Typer(help="System and Python package updates and security patches.",
                  no_args_is_help=True)

RootOption = Annotated[Path | None, typer.Option(
    "--root", help="Work on the apt/dpkg of this alternate root (a chroot or an image).",
    file_okay=False)]
SecurityOption = Annotated[bool, typer.Option(
    "--security-only", help="Only updates from security origins.")]
DriverOption = Annotated[bool, typer.Option(
    "--driver", help="A driver update: move the held driver, CUDA and kernel packages "
    "together (drain, reload or reboot, check the module against NVML).")]


@contextmanager
def _service(config: Path | None, root: Path | None) -> Iterator[UpdateService]:
    from ..updates.service import UpdateService

    if root is not None and not root.is_dir():
        raise UsageError(f"--root {root}: not a directory")
    cfg = effective_config(config)
    with state_store(cfg) as store:  # the config file is snapshotted with the rest
        yield UpdateService(cfg, store, root=root, config_file=config_path(config))


@contextmanager
def _node_lease(svc: UpdateService, owner: str) -> Iterator[None]:
    """The node's maintenance lease, so no scheduled backup or diagnostic runs beside the
    update (an image root that is not this node needs none)."""
    from ..schedule.lease import Lease

    if svc.root is not None and not svc.cfg.updates.root_is_live:
        yield
        return
    with Lease(svc.store, svc.clock, svc.cfg.schedule.lease_ttl).hold(owner):
        yield


def _mode(security_only: bool, driver: bool) -> Mode:
    if security_only and driver:
        raise UsageError("--security-only and --driver exclude each other")
    return "driver" if driver else "security" if security_only else "routine"


def _plan_table(items: list[PlanItem]) -> Table:
    t = Table()
    for col in ("env", "package", "current", "candidate", "origin", "security", "held",
                "disruptive", "action"):
        t.add_column(col)
    for i in items:
        t.add_row(escape(i.manager), escape(i.name), escape(i.current), escape(i.candidate),
                  escape(i.origin), "yes" if i.security else "", "yes" if i.held else "",
                  escape(i.disruption or ""), "[green]install" if i.selected
                  else f"[dim]skip: {escape(i.skip_reason or '')}")
    return t


@app.command("plan")
def plan(
    security_only: SecurityOption = False,
    driver: DriverOption = False,
    root: RootOption = None,
    refresh: Annotated[bool, typer.Option(help="Fetch the package indexes first.")] = True,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """What would change: versions, origin, security, holds, disruption, and why not."""
    mode = _mode(security_only, driver)
    with _service(config, root) as svc:
        items = svc.plan(mode, refresh=refresh)
    if json_out:
        print_json([i.to_json() for i in items])
        return
    if not items:
        typer.echo("everything is up to date")
        return
    Console().print(_plan_table(items))
    n = sum(i.selected for i in items)
    typer.echo(f"{n} of {len(items)} updates would be installed")


def _print_step(step: str, status: str, detail: str) -> None:
    """Progress on stderr, one line per finished step (stdout stays for the result)."""
    if status != "running":
        mark = {"done": "ok", "skipped": "--", "failed": "FAILED", "waiting": ".."}[status]
        sys.stderr.write(f"  [{mark:>6}] {step}: {detail}\n")
        sys.stderr.flush()


def _report(run: RunRecord | None, json_out: bool) -> None:
    from ..updates.errors import UpdateError

    if run is None:
        typer.echo("no update run to resume")
        return
    if json_out:
        print_json(run.to_json())
    elif run.status == "awaiting-reboot":
        typer.echo(f"update run {run.id}: rebooting; it continues after boot")
    elif run.status == "succeeded":
        typer.echo(f"update run {run.id} succeeded: {len(run.items)} package(s) updated")
    if run.status == "failed":
        steps = {s.step: s.status for s in run.steps}
        if "apply" not in steps:
            after = "nothing was changed"
        elif "recovery_errors" in run.state:
            after = "recovery incomplete, the node needs a person"
        else:
            after = "packages rolled back and the config snapshot restored"
        raise UpdateError(f"update run {run.id} failed: {run.error}; {after} (see "
                          "`swarm-maint update history`)")


@app.command("apply")
def apply(
    security_only: SecurityOption = False,
    driver: DriverOption = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    root: RootOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run the node runbook; on failure roll back and exit non-zero."""
    mode = _mode(security_only, driver)
    with _service(config, root) as svc:
        svc.check_no_unfinished_run()
        items = svc.plan(mode)
        selected = [i for i in items if i.selected]
        if not selected:
            if json_out:
                print_json({"status": "nothing to do", "plan": [i.to_json() for i in items]})
            else:
                typer.echo("nothing to update")
            return
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError("update apply needs --yes when not run from a terminal")
            Console().print(_plan_table(items))
            if not typer.confirm(f"install {len(selected)} update(s)?"):
                raise typer.Exit(1)
        if not json_out:
            svc.on_step.append(_print_step)
        with _node_lease(svc, "cli: update apply"):
            run = svc.apply(items, mode)
    _report(run, json_out)


@app.command("resume")
def resume(root: RootOption = None, config: ConfigOption = None,
           json_out: JsonOption = False) -> None:
    """Continue an update run that was cut off (a crash, a reboot)."""
    with _service(config, root) as svc:
        if not json_out:
            svc.on_step.append(_print_step)
        with _node_lease(svc, "cli: update resume"):
            run = svc.resume()
    _report(run, json_out)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


@app.command("history")
def history(
    limit: Annotated[int, typer.Option(min=1, help="Show this many runs.")] = 20,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Every update run with its steps, newest first."""
    from ..updates.history import UpdateHistory

    with state_store(effective_config(config)) as store:
        runs = UpdateHistory(store).runs(limit)
    if json_out:
        print_json([r.to_json() for r in runs])
        return
    if not runs:
        typer.echo("no update runs yet")
        return
    con = Console()
    for r in runs:
        con.print(f"[bold]run {r.id}[/] {r.mode} ({r.trigger}) {_when(r.started)} → "
                  f"{_when(r.ended)}  [{'green' if r.status == 'succeeded' else 'red'}]"
                  f"{r.status}[/]" + (f": {escape(r.error)}" if r.error else ""))
        con.print("  " + ", ".join(f"{i.manager}:{i.name} {i.current}→{i.candidate}"
                                   for i in r.items), markup=False)
        t = Table(show_header=False, box=None, padding=(0, 2))
        for s in r.steps:
            t.add_row(escape(s.step), escape(s.status), escape(s.detail))
        con.print(t)

