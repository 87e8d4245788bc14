"""Start ``backup run`` and ``backup restore`` without the command-line framework.

These two run every day from the scheduler and from scripts, and a backup of unchanged data
is over in a fraction of a second. Typer builds a pydantic adapter for every parameter it
parses, which, with its import, cost about 0.15 s of a 0.4 s run and 15 MiB of memory. This
parser takes only plain, well-formed command lines: the options of the table below, each
value in the next argument or after ``=``. Anything else (``--help``, an unknown or
misspelled option, a missing argument, ``--``, a value that starts with ``-``, a directory
given as a password or config file, a global option) goes to the Typer CLI, which gives
the usual help and usage errors. tests/backup/test_fast_path.py holds the two parsers to the
same options, defaults and results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

# path: a value given as a Path; file: a path that must not be a directory
Kind = Literal["flag", "value", "multi", "path", "file"]

# The records this and the engine's start-up modules define are NamedTuples or plain
# classes, not dataclasses: making a dataclass took about 1 ms each, and the
# dataclasses module brings inspect (~15 ms of a cold `backup run` start in all).


class Option(NamedTuple):
    dest: str
    names: tuple[str, ...]
    kind: Kind
    required: bool = False


class Command(NamedTuple):
    words: tuple[str, ...]
    target: str  # function in backup_ops
    options: tuple[Option, ...]
    positional: str  # keyword the positional arguments go to
    many: bool  # several positional arguments (at least one, as paths) or exactly one

    def option(self, name: str) -> Option | None:
        for opt in self.options:
            if name in opt.names:
                return opt
        return None


_COMMON = (
    Option("repo", ("--repo", "-r"), "value", required=True),
    Option("password_file", ("--password-file",), "file"),
    Option("config", ("--config", "-c"), "file"),
    Option("json_out", ("--json",), "flag"),
)

COMMANDS: tuple[Command, ...] = (
    Command(("backup", "run"), "backup_run", (
        *_COMMON,
        Option("tag", ("--tag",), "multi"),
        Option("exclude", ("--exclude",), "multi"),
        Option("one_file_system", ("--one-file-system",), "flag"),
        Option("no_lease", ("--no-lease",), "flag"),
    ), positional="paths", many=True),
    Command(("backup", "restore"), "backup_restore", (
        *_COMMON,
        Option("target", ("--target",), "path", required=True),
        Option("include", ("--include",), "multi"),
    ), positional="snapshot", many=False),
)


class Call:
    def __init__(self, command: Command, kwargs: dict[str, Any] | None = None) -> None:
        self.command = command
        self.kwargs: dict[str, Any] = {} if kwargs is None else kwargs

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Call) and (self.command, self.kwargs)
                == (other.command, other.kwargs))

    def __repr__(self) -> str:
        return f"Call({self.command.words!r}, {self.kwargs!r})"

    def function(self) -> Callable[..., int]:
        from . import backup_ops

        fn: Callable[..., int] = getattr(backup_ops, self.command.target)
        return fn

    def __call__(self) -> int:
        return self.function()(**self.kwargs)


def parse(argv: Sequence[str]) -> Call | None:
    """The call a plain command line of a fast-path command makes, or None (then the
    Typer CLI handles it)."""
    cmd = next((c for c in COMMANDS if tuple(argv[:len(c.words)]) == c.words), None)
    if cmd is None:
        return None
    values: dict[str, Any] = {}
    positional: list[str] = []
    args = list(argv[len(cmd.words):])
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") and arg:
            positional.append(arg)
            continue
        if arg in ("-", "--") or not arg:
            return None
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        opt = cmd.option(name)
        if opt is None:
            return None
        if opt.kind == "flag":
            if eq:
                return None
            values[opt.dest] = True
            continue
        if eq:
            value = inline
        elif i < len(args):
            value = args[i]
            i += 1
        else:
            return None
        if not value or value.startswith("-"):
            return None
        if opt.kind == "multi":
            values.setdefault(opt.dest, []).append(value)
        else:
            values[opt.dest] = value
    if any(o.required and o.dest not in values for o in cmd.options):
        return None
    if not positional or (not cmd.many and len(positional) > 1):
        return None
    kwargs: dict[str, Any] = {}
    for opt in cmd.options:
        if opt.dest not in values:
            continue
        given = values[opt.dest]
        if opt.kind == "file" and os.path.isdir(given):
            return None  # Typer's error: a file was expected
        if opt.kind in ("path", "file"):
            kwargs[opt.dest] = Path(given)
        elif opt.kind == "multi":
            kwargs[opt.dest] = tuple(given)
        else:
            kwargs[opt.dest] = given
    kwargs[cmd.positional] = [Path(p) for p in positional] if cmd.many else positional[0]
    return Call(cmd, kwargs)
