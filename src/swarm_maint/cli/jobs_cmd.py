"""``swarm-maint jobs list|history|run``: the automated maintenance jobs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    from ..schedule.scheduler import Scheduler

app = typer.Typer(help="The automated maintenance jobs (the agent's schedule).",
                  no_args_is_help=True)

StateDirOption = Annotated[Path | None, typer.Option(
    "--state-dir", help="State directory (overrides the config).", file_okay=False)]
_STYLE = {"succeeded": "green", "failed": "bold red", "missed": "yellow", "skipped": "dim",
          "interrupted": "magenta", "running": "cyan", "waiting": "cyan"}


@contextmanager
def _scheduler(config: Path | None, state_dir: Path | None) -> Iterator[Scheduler]:
    from ..clock import SystemClock
    from ..health.check import FrameSamples, gpus_idle
    from ..monitoring.oneshot import local_hub
    from ..schedule.builtin import JobContext, one_shot_health
    from ..schedule.service import build_scheduler

    cfg = effective_config(config)
    config = config_path(config)  # snapshotted with the rest
    if state_dir is not None:
        cfg = cfg.with_state_dir(state_dir)
    clock = SystemClock()

    def idle() -> tuple[bool, str]:
        hub = local_hub(cfg)
        try:
            return gpus_idle(FrameSamples(hub.latest()))
        finally:
            hub.close()

    with state_store(cfg) as store:
        ctx = JobContext(cfg, store, clock, config_file=config,
                         health=lambda: one_shot_health(cfg, store, clock), idle=idle)
        yield build_scheduler(ctx)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).astimezone().strftime(
        "%Y-%m-%d %H:%M:%S")


def _took(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _status(s: str) -> str:
    style = _STYLE.get(s)
    return f"[{style}]{s}[/]" if style else escape(s)


def _from_agent(config: Path | None, url: str | None) -> list[dict[str, Any]] | None:
    """The running agent's view (it knows what waits and why), or None."""
    from .status_cmd import agent_base, ask_agent

    data = ask_agent(agent_base(effective_config(config), url), "/api/v1/jobs")
    if not isinstance(data, dict) or not data.get("enabled"):
        return None  # no agent, a scheduler switched off, or not a swarm-maint agent
    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        return None
    return jobs


@app.command("list")
def list_jobs(config: ConfigOption = None, state_dir: StateDirOption = None,
              url: Annotated[str | None, typer.Option(
                  "--url", help="Agent base URL (default: from the config).")] = None,
              json_out: JsonOption = False) -> None:
    """Every job: schedule, state, next run and last result (from the running agent,
    else read from the state directory)."""
    jobs = _from_agent(config, url) if state_dir is None else None
    if jobs is None:
        with _scheduler(config, state_dir) as sched:
            jobs = sched.statuses()
    if json_out:
        print_json(jobs)
        return
    t = Table(title="maintenance jobs")
    for col in ("job", "schedule", "state", "next run", "last run", "result", "took",
                "summary"):
        t.add_column(col, overflow="fold")
    for j in jobs:
        last: dict[str, Any] | None = j["last_run"]
        rules = [w for w, on in (("window", j["window"]), ("lease", j["lease"])) if on]
        t.add_row(escape(j["name"]),
                  escape(j["schedule"] + (f"\n({', '.join(rules)})" if rules else "")),
                  escape(j["state"] + (f"\n{j['reason']}" if j["reason"] else "")),
                  _when(j["next_run"]), _when(last["ended"] if last else None),
                  _status(last["status"]) if last else "-",
                  _took(last["duration"] if last else None),
                  escape(last["summary"]) if last else "")
    Console().print(t)


@app.command("history")
def history(
    name: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10000,
                                       help="How many runs, newest first.")] = 30,
    config: ConfigOption = None, state_dir: StateDirOption = None,
    json_out: JsonOption = False,
) -> None:
    """Past runs, newest first: start, end, status, duration, summary."""
    with _scheduler(config, state_dir) as sched:
        if name is not None and name not in sched.jobs and not sched.history.runs(name, 1):
            raise UsageError(f"no job named {name!r}; the jobs are: "
                             f"{', '.join(sorted(sched.jobs))}")
        runs = sched.history.runs(name, limit)
    if json_out:
        print_json([r.to_json() for r in runs])
        return
    t = Table(title="job history")
    for col in ("id", "job", "trigger", "started", "ended", "status", "took", "summary"):
        t.add_column(col, overflow="fold")
    for r in runs:
        trig = r.trigger + (f" #{r.attempt}" if r.attempt > 1 else "")
        t.add_row(str(r.id), escape(r.job), escape(trig), _when(r.started), _when(r.ended),
                  _status(r.status), _took(r.duration), escape(r.summary))
    Console().print(t)


@app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="The job to run now (see `jobs list`).")],
    config: ConfigOption = None, state_dir: StateDirOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run a job now, in this process, under the node's maintenance lease.

    Exit 0 when it succeeded or had nothing to do, 1 when it failed, 31 when another
    job holds the lease."""
    with _scheduler(config, state_dir) as sched:
        if name not in sched.jobs:
            raise UsageError(f"no job named {name!r}; the jobs are: "
                             f"{', '.join(sorted(sched.jobs))}")
        if not json_out:
            typer.echo(f"running {name} …", err=True)
        rec = sched.run_now(name, trigger="cli")
    if json_out:
        print_json(rec.to_json())
    else:
        Console().print(f"{escape(name)}: {_status(rec.status)} in {_took(rec.duration)}: "
                        f"{escape(rec.summary)}", highlight=False)
    if rec.status == "failed":
        raise typer.Exit(1)
