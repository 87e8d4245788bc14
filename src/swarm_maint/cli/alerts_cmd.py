"""``swarm-maint alerts rules check|list``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..alerts.rules import load_rule_file, load_rules
from ..durations import format_duration

app = typer.Typer(help="Alerting rules and alerts.", no_args_is_help=True)
rules_app = typer.Typer(help="Validate and list alerting rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


@rules_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The Prometheus rule file (YAML) to validate.")],
) -> None:
    """Exit 0 when FILE is valid; else exit 2 with one line naming file, group, rule, problem."""
    rules = load_rule_file(file)
    typer.echo(f"{file}: {len(rules)} rule{'' if len(rules) == 1 else 's'} OK")


@rules_app.command("list")
def list_rules(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the alerting rules in effect (the built-in defaults; rule files come later)."""
    rules = load_rules([], include_defaults=True)
    if as_json:
        typer.echo(json.dumps([r.to_json() for r in rules], indent=2))
        return
    for r in rules:
        severity = r.labels.get("severity", "-")
        typer.echo(f"{r.group}/{r.name}  severity={severity}  "
                   f"for={format_duration(r.for_seconds)}  {r.expr.text}")
