"""The ``swarm-maint`` command: wires the command modules and maps errors to exit codes.

Plain ``backup run`` and ``backup restore`` command lines take the fast path (fast_path.py,
no Typer); every other one goes to a Typer CLI built with just the invoked command."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from ..errors import FileAccessError, SwarmMaintError

if TYPE_CHECKING:
    import typer

    from . import fast_path

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


_finished_fast = False  # a fast-path command returned: nothing is left to clean up


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on stderr and the error's exit code for every SwarmMaintError."""
    global _finished_fast
    args = sys.argv[1:] if argv is None else argv
    if argv is None:  # a process of its own: the key may be derived while modules load
        from ..backup import early_kdf

        early_kdf.start(args)
    from . import fast_path

    call = fast_path.parse(args)
    try:
        if call is not None:
            try:
                code = call()
                _finished_fast = True
                return code
            except (EOFError, KeyboardInterrupt):
                sys.stderr.write("\nswarm-maint: aborted\n")
                return 130
        return _typer_main(args)
    except SwarmMaintError as exc:
        _reraise_with_debug(call)
        return _failed(args, str(exc), exc.exit_code)
    except OSError as exc:  # what no narrower error explains: one line, not a traceback
        _reraise_with_debug(call)
        err = FileAccessError.from_os_error(exc)
        return _failed(args, str(err), err.exit_code)


def _failed(args: list[str], message: str, code: int) -> int:
    """Say why on stderr; with --json also on stdout as ``{"error", "exit_code"}``, so a
    script that parses stdout gets JSON whatever happened."""
    sys.stderr.write(f"swarm-maint: error: {message}\n")
    _json_error(args, message, code)
    return code


def _json_error(args: list[str], message: str, code: int) -> None:
    options = args[:args.index("--")] if "--" in args else args
    if "--json" in options:
        import json

        sys.stdout.write(json.dumps({"error": message, "exit_code": code}) + "\n")


def _reraise_with_debug(call: fast_path.Call | None) -> None:
    """Re-raise the error being handled when --debug (an option of the Typer CLI) asks
    for its traceback."""
    if call is None:
        from .root import options

        if options.debug:
            raise


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
            fmt = getattr(exc, "format_message", None)
            _json_error(args, fmt() if callable(fmt) else str(exc), code)
            return code
        raise
    # in non-standalone mode a command's typer.Exit(n) comes back as the return value
    return rv if isinstance(rv, int) else 0


def _exit_without_teardown(code: int) -> NoReturn:
    """End the process now. A finished ``backup run`` or ``restore`` has closed and synced
    all it wrote (repository objects fsynced, lock released, files cache and state
    database closed); the interpreter's teardown would only free every module and object
    one by one: ~20 ms of the 0.4 s that a backup of unchanged data takes."""
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = code or 120  # what the interpreter exits with when this flush fails
    os._exit(code)


def run() -> None:
    """Console-script entry point."""
    code = main()
    if _finished_fast:
        _exit_without_teardown(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
