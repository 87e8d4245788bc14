"""``swarm-maint config check|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import tomli_w
import typer

from ..config import Config, load_config
from .common import ConfigOption, effective_config

app = typer.Typer(help="Validate and show the configuration.", no_args_is_help=True)


@app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The TOML config file to validate.")],
) -> None:
    """Exit 0 when FILE is valid; else exit 2 with one line naming file, key and problem."""
    load_config(file)
    typer.echo(f"{file}: OK")


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

