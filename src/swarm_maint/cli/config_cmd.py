"""``swarm-maint config check|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import tomli_w
import typer

from ..config import Config, load_config
from ..errors import ConfigError
from .common import ConfigOption, effective_config

app = typer.Typer(help="Validate and show the configuration.", no_args_is_help=True)


@app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The TOML config file to validate.")],
) -> None:
    """Exit 0 when FILE is valid; else exit 2 with one line naming file, key and problem."""
    cfg = load_config(file)
    _check_what_it_names(file, cfg)
    typer.echo(f"{file}: OK")


def _check_what_it_names(file: Path, cfg: Any) -> None:
    """What the file names beyond its own keys, as the agent would build it: the health
    checks (families that exist, no two with one name, overrides of checks that exist)
    and the alert rule files (readable, valid). Nothing is run."""
    from ..alerts.rules import load_rules
    from ..errors import PluginError
    from ..health.build import all_checks, unknown_overrides
    from ..health.check import HealthContext

    def no_frame() -> Any:
        raise RuntimeError("config check runs no health check")

    if cfg.health.enabled:
        ctx = HealthContext(config=cfg.health, frame=no_frame)
        try:
            checks = all_checks(ctx)
        except PluginError as exc:
            raise ConfigError(f"{file}: key health: {exc}") from None
        unknown = unknown_overrides(ctx, checks)
        if unknown:
            raise ConfigError(f"{file}: key health.checks: no such check: "
                              f"{', '.join(unknown)}")
    if cfg.alerts.enabled:
        load_rules(cfg.alerts.rule_files, include_defaults=cfg.alerts.default_rules)


@app.command("show")
def show(
    config: ConfigOption = None,
    defaults: Annotated[
        bool, typer.Option("--defaults", help="Show the embedded defaults instead.")
    ] = False,
) -> None:
    """Print the effective configuration as TOML."""
    cfg = Config() if defaults else effective_config(config)
    typer.echo(tomli_w.dumps(cfg.model_dump(mode="json")), nl=False)

