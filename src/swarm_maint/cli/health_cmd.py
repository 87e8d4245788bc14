"""``swarm-maint health run|list|history``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from .common import ConfigOption, JsonOption, effective_config, print_json, state_store
from .plain import shown_text

app = typer.Typer(help="Hardware and software health checks.", no_args_is_help=True)

_STYLE = {"OK": "green", "WARNING": "yellow", "CRITICAL": "bold red", "UNKNOWN": "magenta"}


def _service(config: ConfigOption) -> Any:
    """The health subsystem on this node, outside the agent (one metrics reading)."""
    from ..health.check import FrameSamples
    from ..health.service import build_health
    from ..monitoring.oneshot import local_hub
    from ..store import Store

    cfg = effective_config(config)
    hub = local_hub(cfg)
    store = Store(cfg.agent.resolved_state_dir() / "state.db")
    frame = FrameSamples(hub.latest())
    return cfg, hub, store, build_health(cfg, lambda: frame, store, nvml_events=False)


@app.command("run")
def run(
    check: Annotated[list[str] | None, typer.Option("--check", help="Run only these.")] = None,
    level: Annotated[int, typer.Option("--level", min=1, max=2,
                                       help="2 adds active diagnostics (idle node only).")] = 1,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run checks now. Exit 0 all OK, 1 a WARNING, 2 a CRITICAL, 3 UNKNOWN only."""
    from ..health.runner import exit_code

    _cfg, hub, store, svc = _service(config)
    try:
        known = set(svc.runner.checks)
        unknown = sorted(set(check or []) - known)
        if unknown:
            raise UsageError(f"no such check: {', '.join(unknown)} "
                             f"(see `swarm-maint health list`)")
        if svc.xids is not None:
            svc.xids.poll()  # read what the kernel log has now
        from ..health.check import gpus_idle

        frame = svc.context.frame()
        results = svc.runner.run_now(check or [], level=level,
                                     idle=lambda: gpus_idle(frame))
    finally:
        svc.close()
        hub.close()
        store.close()
    results.sort(key=lambda r: r.check)
    if json_out:
        print_json([r.to_dict() for r in results])
    else:
        t = Table()
        for col in ("check", "status", "message", "action"):
            t.add_column(col)
        for r in results:
            t.add_row(escape(r.check), f"[{_STYLE[r.status]}]{r.status}",
                      escape(shown_text(r.message)),
                      escape(r.action) if r.action and r.status != "OK" else "")
        Console().print(t)
    raise typer.Exit(exit_code(results))


@app.command("list")
def list_(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """The configured checks with their intervals."""
    _cfg, hub, store, svc = _service(config)
    try:
        # a custom check's own timeout, not the runner's guard around it (5 s more)
        rows = [{"check": c.name, "level": c.level, "interval": svc.runner.interval_of(c),
                 "timeout": getattr(c, "command_timeout", c.timeout)}
                for c in sorted(svc.runner.checks.values(), key=lambda c: c.name)]
    finally:
        svc.close()
        hub.close()
        store.close()
    if json_out:
        print_json(rows)
        return
    t = Table()
    for col in ("check", "level", "interval", "timeout"):
        t.add_column(col)
    for r in rows:
        t.add_row(escape(r["check"]), str(r["level"]), f"{r['interval']:g}s",
                  f"{r['timeout']:g}s")
    Console().print(t)


@app.command("history")
def history(
    check: Annotated[str | None, typer.Option("--check")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000_000)] = 100,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Past transitions of the health conditions, newest first."""
    from ..health.runner import load_history

    with state_store(effective_config(config)) as store:
        rows = load_history(store, check, 0.0, limit)
    if json_out:
        print_json(rows)
        return
    t = Table()
    for col in ("time", "check", "change", "message"):
        t.add_column(col)
    for r in rows:
        t.add_row(datetime.fromtimestamp(r["ts"], UTC).strftime("%Y-%m-%d %H:%M:%S"),
                  escape(r["check"]),
                  f"{escape(r['from'])} -> [{_STYLE.get(r['to'], '')}]{escape(r['to'])}",
                  escape(shown_text(r["message"])))
    Console().print(t)
