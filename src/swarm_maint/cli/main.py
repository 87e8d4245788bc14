"""The ``swarm-maint`` command: wires the command modules and maps errors to exit codes.

Plain ``backup run`` and ``backup restore`` command lines take the fast path (fast_path.py,
no Typer); every other one goes to a Typer CLI built with just the invoked command."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from ..errors import SwarmMaintError
from . import fast_path

if TYPE_CHECKING:
    import typer

# command name -> (module, attribute, is a group); a module is imported only when its
# command runs (or for help), so `backup run` does not pay for the agent, alerts, health
# and update code at every start
_COMMANDS: dict[str, tuple[str, str, bool]] = {
    "agent": ("agent_cmd", "agent", False),
    "status": ("status_cmd", "status", False),
    "config": ("config_cmd", "app", True),
    "backup": ("backup_cmd", "app", True),
    "config-snapshot": ("config_snapshot_cmd", "app", True),
    "health": ("health_cmd", "app", True),
    "alerts": ("alerts_cmd", "app", True),
    "update": ("update_cmd", "app", True),
    "jobs": ("jobs_cmd", "app", True),
    "service": ("service_cmd", "app", True),
}


def build_app(only: str | None = None) -> typer.Typer:
    """The CLI with every command, or with just ``only`` (what one invocation needs)."""
    import typer

    cli = typer.Typer(
        name="swarm-maint",
        help="Maintenance agent of Swarm GPU nodes.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for name, (module, attr, group) in _COMMANDS.items():
        if only is not None and name != only:
            continue
        obj = getattr(importlib.import_module(f"{__package__}.{module}"), attr)
        if group:
            cli.add_typer(obj, name=name)
        else:
            cli.command(name)(obj)
    from .root import root

    cli.callback()(root)
    return cli


def _command_name(argv: list[str]) -> str | None:
    """The command an argument list invokes, when it is a known one."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in _COMMANDS else None
        if arg in ("--help", "-h"):
            return None
    return None


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the complete CLI, for introspection
        return build_app()
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on stderr and the error's exit code for every SwarmMaintError."""
    args = sys.argv[1:] if argv is None else argv
    call = fast_path.parse(args)
    try:
        if call is not None:
            try:
                return call()
            except (EOFError, KeyboardInterrupt):
                sys.stderr.write("\nswarm-maint: aborted\n")
                return 130
        return _typer_main(args)
    except SwarmMaintError as exc:
        if call is None:  # --debug is an option of the Typer CLI
            from .root import options

            if options.debug:
                raise
        sys.stderr.write(f"swarm-maint: error: {exc}\n")
        return exc.exit_code


def _typer_main(args: list[str]) -> int:
    import typer

    try:
        rv = build_app(_command_name(args))(args=args, standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        sys.stderr.write("swarm-maint: aborted\n")
        return 130
    except SwarmMaintError:
        raise
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
