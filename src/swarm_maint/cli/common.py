"""Options and helpers shared by the command modules."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..config import Config, load_config

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["ConfigOption", "JsonOption", "config_path", "effective_config", "print_json",
           "state_store"]

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


def config_path(path: Path | None) -> Path | None:
    """The config file in effect: --config, else $SWARM_MAINT_CONFIG, else None (the
    embedded defaults)."""
    if path is None:
        env = os.environ.get("SWARM_MAINT_CONFIG")
        if env:
            return Path(env)
    return path


def effective_config(path: Path | None) -> Config:
    return load_config(config_path(path))


@contextmanager
def state_store(cfg: Config) -> Iterator[Store]:
    """The node's state database (the one the agent uses), closed after the block."""
    from ..store import Store

    store = Store(cfg.agent.resolved_state_dir() / "state.db")
    try:
        yield store
    finally:
        store.close()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
