"""``swarm-maint alerts rules|list|test|silence|maintenance``.

Silences and maintenance windows are written to the state database, where the running
agent reads them at its next evaluation; ``list`` asks the agent and falls back to the
database when none answers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..durations import format_duration, parse_duration
from ..errors import UsageError
from .common import ConfigOption, JsonOption, effective_config, print_json

app = typer.Typer(help="Alerting rules, alerts, silences and maintenance.",
                  no_args_is_help=True)
rules_app = typer.Typer(help="Validate and list alerting rules.", no_args_is_help=True)
silence_app = typer.Typer(help="Mute matching alerts for a while.", no_args_is_help=True)
maint_app = typer.Typer(help="Hold back the alerts a maintenance is expected to cause.",
                        no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(silence_app, name="silence")
app.add_typer(maint_app, name="maintenance")

MatcherOption = Annotated[list[str] | None, typer.Option(
    "--matcher", "-m", help="Label matcher: name=value, name!=value, name=~regex, name!~regex.")]


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _store(config: Path | None) -> Any:
    from ..store import Store

    cfg = effective_config(config)
    return cfg, Store(cfg.agent.resolved_state_dir() / "state.db")


# -- rules ------------------------------------------------------------------------------------


@rules_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The Prometheus rule file (YAML) to validate.")],
) -> None:
    """Exit 0 when FILE is valid; else exit 2 with one line naming file, group, rule, problem."""
    from ..alerts.rules import load_rule_file

    rules = load_rule_file(file)
    typer.echo(f"{file}: {len(rules)} rule{'' if len(rules) == 1 else 's'} OK")


@rules_app.command("list")
def list_rules(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """List the alerting rules in effect: the defaults and the configured rule files."""
    from ..alerts.rules import load_rules

    cfg = effective_config(config)
    rules = load_rules(cfg.alerts.rule_files, include_defaults=cfg.alerts.default_rules)
    if json_out:
        print_json([r.to_json() for r in rules])
        return
    t = Table()
    for col in ("group", "alert", "severity", "for", "expr"):
        t.add_column(col, overflow="fold")
    for r in rules:
        t.add_row(escape(r.group), escape(r.name), escape(r.labels.get("severity", "-")),
                  format_duration(r.for_seconds), escape(r.expr.text))
    Console().print(t)


# -- alerts -----------------------------------------------------------------------------------


@app.command("list")
def list_alerts(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """Active alerts and where each one's notifications stand, per receiver."""
    import httpx

    from ..alerts.service import stored_alerts
    from .status_cmd import _agent_url

    cfg = effective_config(config)
    base = _agent_url(cfg)
    try:
        resp = httpx.get(f"{base}/api/v1/alerts", timeout=3.0)
        resp.raise_for_status()
        alerts: list[dict[str, Any]] = resp.json()["alerts"]
        source = f"agent at {base}"
    except (httpx.HTTPError, ValueError, KeyError):
        _, store = _store(config)
        try:
            alerts = stored_alerts(store)
        finally:
            store.close()
        source = f"state database (no agent answered at {base}; firing alerts only)"
    if json_out:
        print_json({"source": source, "alerts": alerts})
        return
    console = Console()
    if not alerts:
        console.print(f"no active alerts ({source})", markup=False)
        return
    t = Table(title=f"alerts · {source}")
    for col in ("alert", "state", "severity", "labels", "since", "delivery"):
        t.add_column(col, overflow="fold")
    for a in alerts:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items())
                           if k not in ("alertname", "severity", "node"))
        state = a["state"] + (" (flapping)" if a.get("flapping") else "")
        delivery = "; ".join(
            f"{d['receiver']}: {d['state']}" + (f" ({d['last_error']})" if d["last_error"]
                                                else "")
            for d in a.get("deliveries", [])) or "-"
        if a.get("silenced_by"):
            delivery += f" [silenced by {a['silenced_by']}]"
        if a.get("held_by"):
            delivery += f" [held by maintenance {a['held_by']}]"
        t.add_row(escape(a["alertname"]), escape(state),
                  escape(a["labels"].get("severity", "-")), escape(labels or "-"),
                  _when(a["active_since"]), escape(delivery))
    console.print(t)


@app.command("test")
def send_test_notification(
    receiver: Annotated[str, typer.Argument(help="Name of a configured receiver.")],
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Send a test notification to RECEIVER now; exit 1 with the reason when it fails."""
    import time

    from ..alerts.notifiers import NotifyError
    from ..alerts.service import build_notifiers, send_test

    cfg = effective_config(config)
    notifiers = build_notifiers(cfg.alerts.receivers)
    try:
        send_test(notifiers, receiver, cfg.agent.resolved_node_name(), time.time())
    except NotifyError as exc:
        if json_out:
            print_json({"receiver": receiver, "delivered": False, "error": str(exc)})
        else:
            typer.echo(f"swarm-maint: error: {receiver}: {exc}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        print_json({"receiver": receiver, "delivered": True})
    else:
        typer.echo(f"test notification delivered to {receiver}")


# -- silences ---------------------------------------------------------------------------------


def _silences(config: Path | None) -> Any:
    from ..alerts.silences import Silences
    from ..clock import SystemClock

    _, store = _store(config)
    return store, Silences(store, SystemClock())


@silence_app.command("add")
def silence_add(
    matcher: MatcherOption = None,
    duration: Annotated[str, typer.Option("--duration", "-d", help="How long, e.g. 2h.")] = "1h",
    comment: Annotated[str, typer.Option("--comment", help="Why (required).")] = "",
    author: Annotated[str | None, typer.Option("--author", help="Default: your user.")] = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Mute alerts matching every --matcher for --duration."""
    store, silences = _silences(config)
    try:
        s = silences.add(matcher or [], _duration(duration, "--duration"), comment, author)
    finally:
        store.close()
    if json_out:
        print_json(s.to_json(s.created))
    else:
        typer.echo(f"silence {s.id} until {_when(s.ends)}: {' '.join(s.matchers)}")


@silence_app.command("list")
def silence_list(
    all_: Annotated[bool, typer.Option("--all", help="Include expired silences.")] = False,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """The silences in force (and with --all, those expired in the last 7 days)."""
    import time

    store, silences = _silences(config)
    try:
        found = silences.all(include_expired=all_)
    finally:
        store.close()
    now = time.time()
    if json_out:
        print_json([s.to_json(now) for s in found])
        return
    t = Table()
    for col in ("id", "state", "matchers", "ends", "by", "comment"):
        t.add_column(col, overflow="fold", no_wrap=col == "id")  # ids are copied whole
    for s in found:
        t.add_row(s.id, s.state(now), escape(" ".join(s.matchers)), _when(s.ends),
                  escape(s.created_by), escape(s.comment))
    Console().print(t)


@silence_app.command("expire")
def silence_expire(
    silence_id: Annotated[str, typer.Argument(metavar="ID", help="From `silence list`.")],
    config: ConfigOption = None,
) -> None:
    """End a silence now."""
    store, silences = _silences(config)
    try:
        s = silences.expire(silence_id)
    finally:
        store.close()
    typer.echo(f"silence {s.id} expired")


# -- maintenance ------------------------------------------------------------------------------


def _maintenance(config: Path | None) -> Any:
    from ..alerts.maintenance import Maintenance
    from ..clock import SystemClock

    cfg, store = _store(config)
    return store, Maintenance(store, SystemClock(), cfg.alerts.maintenance_expected,
                              cfg.alerts.maintenance_grace)


@maint_app.command("start")
def maintenance_start(
    reason: Annotated[str, typer.Option("--reason", help="What is being done.")] = "",
    max_duration: Annotated[str, typer.Option("--max-duration",
                                              help="Release held alerts after this.")] = "1h",
    matcher: MatcherOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Open a maintenance window; default matchers: alerts.maintenance_expected."""
    store, maint = _maintenance(config)
    try:
        w = maint.begin(reason, _duration(max_duration, "--max-duration"), matcher or [])
    finally:
        store.close()
    if json_out:
        print_json(w.to_json(w.started, maint.grace))
    else:
        typer.echo(f"maintenance {w.id} started; held alerts are released at "
                   f"{_when(w.deadline)} at the latest")


@maint_app.command("end")
def maintenance_end(
    window_id: Annotated[str, typer.Argument(metavar="ID")],
    config: ConfigOption = None,
) -> None:
    """End a maintenance window; alerts still firing after the grace period are sent."""
    store, maint = _maintenance(config)
    try:
        before = maint.get(window_id)
        w = maint.end(window_id)
    finally:
        store.close()
    if before is not None and before.ended is not None:
        typer.echo(f"maintenance {w.id} had already ended at {_when(before.ended)}")
        return
    typer.echo(f"maintenance {w.id} ended; held alerts still firing in "
               f"{format_duration(maint.grace)} will be sent")


@maint_app.command("list")
def maintenance_list(
    all_: Annotated[bool, typer.Option("--all", help="Include ended windows.")] = False,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Maintenance windows holding alerts now (with --all, the ended ones too)."""
    import time

    store, maint = _maintenance(config)
    try:
        found = maint.all(include_ended=all_)
    finally:
        store.close()
    now = time.time()
    if json_out:
        print_json([w.to_json(now, maint.grace) for w in found])
        return
    t = Table()
    for col in ("id", "reason", "holding", "started", "ended", "deadline", "matchers"):
        t.add_column(col, overflow="fold", no_wrap=col == "id")
    for w in found:
        t.add_row(w.id, escape(w.reason), "yes" if w.holds(now, maint.grace) else "no",
                  _when(w.started), _when(w.ended), _when(w.deadline),
                  escape(" ".join(w.matchers)) or "(alerts.maintenance_expected)")
    Console().print(t)

