"""Options and helpers shared by the command modules."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Config, load_config

__all__ = ["ConfigOption", "JsonOption", "effective_config", "print_json"]

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


def effective_config(path: Path | None) -> Config:
    if path is None:
        env = os.environ.get("SWARM_MAINT_CONFIG")
        if env:
            path = Path(env)
    return load_config(path)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
