"""The options before the command: ``--debug`` and ``--version``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from .. import __version__


@dataclass
class RootOptions:
    debug: bool = False


options = RootOptions()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"swarm-maint {__version__}")
        raise typer.Exit()


def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    options.debug = debug
