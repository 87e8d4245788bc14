"""``swarm-maint agent``: run the node agent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigOption, effective_config


def agent(
    config: ConfigOption = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT to serve on (overrides the config).")
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="State directory (overrides the config).",
                     file_okay=False),
    ] = None,
) -> None:
    """Run the node agent until SIGTERM or Ctrl-C."""
    from ..agent import Agent  # imported here: FastAPI is slow to import for other commands

    cfg = effective_config(config)
    logging.basicConfig(
        level=cfg.agent.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    Agent(cfg, listen=listen, state_dir=state_dir, config_file=config).run()
