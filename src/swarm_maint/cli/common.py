"""Options and helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .plain import (
    check_config,
    config_path,
    effective_config,
    node_state,
    print_json,
    state_store,
)

__all__ = ["ConfigOption", "JsonOption", "check_config", "config_path", "effective_config",
           "node_state", "print_json", "state_store"]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (default: $SWARM_MAINT_CONFIG, else embedded defaults).",
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
