"""The ``swarm-maint`` command: wires the command modules and maps errors to exit codes."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import __version__
from ..errors import SwarmMaintError
from . import (
    agent_cmd,
    alerts_cmd,
    backup_cmd,
    config_cmd,
    config_snapshot_cmd,
    health_cmd,
    jobs_cmd,
    service_cmd,
    status_cmd,
    update_cmd,
)

app = typer.Typer(
    name="swarm-maint",
    help="Maintenance agent of Swarm GPU nodes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("agent")(agent_cmd.agent)
app.command("status")(status_cmd.status)
app.add_typer(config_cmd.app, name="config")
app.add_typer(backup_cmd.app, name="backup")
app.add_typer(config_snapshot_cmd.app, name="config-snapshot")
app.add_typer(health_cmd.app, name="health")
app.add_typer(alerts_cmd.app, name="alerts")
app.add_typer(update_cmd.app, name="update")
app.add_typer(jobs_cmd.app, name="jobs")
app.add_typer(service_cmd.app, name="service")

_debug = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"swarm-maint {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    global _debug
    _debug = debug


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on stderr and the error's exit code for every SwarmMaintError."""
    try:
        rv = app(args=argv, standalone_mode=False)
    except SwarmMaintError as exc:
        if _debug:
            raise
        sys.stderr.write(f"swarm-maint: error: {exc}\n")
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        sys.stderr.write("swarm-maint: aborted\n")
        return 130
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        # recent Typer vendors click as typer._click: recognise its ClickException by shape
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            return code
        raise
    # in non-standalone mode a command's typer.Exit(n) comes back as the return value
    return rv if isinstance(rv, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
