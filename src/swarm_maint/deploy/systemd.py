"""The systemd unit of the agent: render, install, uninstall.

The unit starts the agent at boot (after the network is online), restarts it 5 s after a
failure, and stops it with SIGTERM (the agent exits cleanly within seconds; systemd waits up to
``TimeoutStopSec=30s`` before SIGKILL). A system unit keeps the state in
``/var/lib/swarm-maint`` (``StateDirectory=``); a user unit (``--user``) uses the XDG default.

``install`` writes the unit to a temporary name, fsyncs and renames it (mode 0644), then runs
``systemctl daemon-reload`` and ``systemctl enable --now``. When a systemctl command fails the
unit is removed again (or the previous unit put back) and systemd reloaded, so nothing is left
half-installed; the error is one line with systemctl's own message.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ServiceError

__all__ = [
    "SYSTEM_STATE_DIR",
    "SYSTEM_UNIT_DIR",
    "UNIT_NAME",
    "InstallResult",
    "UninstallResult",
    "default_executable",
    "default_unit_dir",
    "exec_start_argv",
    "install",
    "quote_arg",
    "render_unit",
    "split_exec_start",
    "uninstall",
    "unit_state_dir",
]

UNIT_NAME = "swarm-maint.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_STATE_DIR = Path("/var/lib/swarm-maint")  # what StateDirectory=swarm-maint creates
SYSTEMCTL_TIMEOUT = 120.0  # seconds; `enable --now` waits for the start job (Type=exec: quick)

Executable = str | os.PathLike[str] | Sequence[str]
"""The command that runs swarm-maint: a script path, or an argv like ``[python, -m, …]``."""


# --- defaults -----------------------------------------------------------------------------


def default_unit_dir(user: bool) -> Path:
    """/etc/systemd/system, or $XDG_CONFIG_HOME/systemd/user (~/.config/…) for a user unit."""
    if not user:
        return SYSTEM_UNIT_DIR
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def default_executable() -> list[str]:
    """The running swarm-maint: its script, the one next to this Python, else ``python -m``.

    Paths are made absolute but symlinks are kept (resolving a virtual environment's
    ``bin/python`` would leave the environment).
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "swarm-maint" and _is_executable_file(argv0):
        return [os.path.abspath(argv0)]
    if sys.executable:
        sibling = Path(sys.executable).parent / "swarm-maint"
        if _is_executable_file(sibling):
            return [os.path.abspath(sibling)]
    found = shutil.which("swarm-maint")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "swarm_maint.cli.main"]


def unit_state_dir(state_dir: str | os.PathLike[str] | None, config_file: str |
                   os.PathLike[str] | None, user: bool) -> Path | None:
    """The ``--state-dir`` the unit passes: the given one; else for a system unit
    /var/lib/swarm-maint unless the config file sets ``agent.state_dir``; else none."""
    if state_dir is not None:
        return Path(os.path.abspath(state_dir))
    if user:
        return None
    if config_file is not None:
        from ..config import load_config

        if load_config(config_file).agent.state_dir:
            return None
    return SYSTEM_STATE_DIR


# --- rendering ----------------------------------------------------------------------------


def _is_executable_file(path: str | os.PathLike[str]) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _argv(executable: Executable) -> list[str]:
    if isinstance(executable, str | os.PathLike):
        return [os.fspath(executable)]
    argv = [os.fspath(a) for a in executable]
    if not argv:
        raise ServiceError("the swarm-maint command is empty")
    return argv


def quote_arg(arg: str, *, executable: bool = False) -> str:
    """One ExecStart word with systemd's rules: ``%`` → ``%%``, ``$`` → ``$$`` (not in the
    executable's path, which systemd does not expand), backslashes and double quotes escaped,
    double quotes around a word with spaces, quotes, backslashes or ``;``, or an empty one."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in arg):
        raise ServiceError(f"{arg!r}: a control character cannot be written into a unit file")
    out = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if not executable:
        out = out.replace("$", "$$")
    if not arg or arg == ";" or any(c.isspace() or c in "\"'\\" for c in arg):
        out = f'"{out}"'
    return out


def split_exec_start(line: str) -> list[str]:
    """The argv systemd makes of an ExecStart value written by ``quote_arg`` (the inverse:
    quotes, backslash escapes, ``%%`` and ``$$``); other specifiers and variables are refused."""
    words: list[str] = []
    i, n = 0, len(line)
    escapes = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "s": " "}
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        word: list[str] = []
        quote = ""
        while i < n and (quote or not line[i].isspace()):
            c = line[i]
            if c == "\\":
                if i + 1 >= n or line[i + 1] not in escapes:
                    raise ValueError(f"unsupported escape at {i} in {line!r}")
                word.append(escapes[line[i + 1]])
                i += 2
                continue
            if c in "\"'" and (not quote or quote == c):
                quote = "" if quote else c
            elif c == "%" or (c == "$" and words):  # the executable's `$` is not expanded
                if line[i + 1:i + 2] != c:
                    raise ValueError(f"unsupported specifier or variable at {i} in {line!r}")
                word.append(c)
                i += 1
            else:
                word.append(c)
            i += 1
        if quote:
            raise ValueError(f"unterminated quote in {line!r}")
        words.append("".join(word))
    return words


def exec_start_argv(executable: Executable, config_file: str | os.PathLike[str] | None,
                    state_dir: str | os.PathLike[str] | None) -> list[str]:
    """The agent's command line in the unit (every path absolute)."""
    argv = [*_argv(executable), "agent"]
    if not os.path.isabs(argv[0]):
        raise ServiceError(f"{argv[0]}: the swarm-maint executable must be an absolute path")
    if any(c in "\"'\\" for c in argv[0]):  # systemd refuses these in an executable's path
        raise ServiceError(f"{argv[0]}: systemd cannot run an executable whose path has quotes "
                           "or backslashes; install swarm-maint elsewhere")
    if config_file is not None:
        argv += ["--config", os.path.abspath(config_file)]
    if state_dir is not None:
        argv += ["--state-dir", os.path.abspath(state_dir)]
    return argv


def render_unit(executable: Executable, config_file: str | os.PathLike[str] | None,
                state_dir: str | os.PathLike[str] | None, user_unit: bool) -> str:
    """The unit file text: the shipped template with this command line, for the system
    manager or (``user_unit``) a user's manager."""
    argv = exec_start_argv(executable, config_file, state_dir)
    exec_start = " ".join(quote_arg(a, executable=(k == 0)) for k, a in enumerate(argv))
    template = resources.files("swarm_maint.deploy").joinpath(UNIT_NAME).read_text(encoding="utf-8")
    keep, drop = ("@user@", "@system@") if user_unit else ("@system@", "@user@")
    lines = []
    for line in template.splitlines():
        if line.startswith(("#@", drop)):
            continue
        lines.append(line.removeprefix(keep).replace("@EXEC_START@", exec_start))
    return "\n".join(lines) + "\n"


# --- install / uninstall ------------------------------------------------------------------


@dataclass
class InstallResult:
    unit_path: Path
    user: bool
    exec_start: list[str]
    enabled: bool
    started: bool
    replaced: bool  # an earlier unit was overwritten
    commands: list[list[str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"unit": str(self.unit_path), "user": self.user, "exec_start": self.exec_start,
                "enabled": self.enabled, "started": self.started, "replaced": self.replaced,
                "commands": self.commands, "warnings": self.warnings}


@dataclass
class UninstallResult:
    unit_path: Path
    user: bool
    commands: list[list[str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"unit": str(self.unit_path), "user": self.user, "removed": True,
                "commands": self.commands}


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


class _Systemctl:
    """Runs ``systemctl [--user] …`` and records every command it ran."""

    def __init__(self, command: Sequence[str], user: bool) -> None:
        if not command:
            raise ServiceError("the systemctl command is empty")
        self.base = [*command, *(["--user"] if user else [])]
        self.ran: list[list[str]] = []

    def __call__(self, *args: str) -> None:
        argv = [*self.base, *args]
        self.ran.append(argv)
        shown = shlex.join(argv)
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT,
                               check=False, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ServiceError(f"{argv[0]}: not found; this needs systemd (or point "
                               "--systemctl at the systemctl to use)") from None
        except OSError as exc:
            raise ServiceError(f"cannot run {argv[0]}: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise ServiceError(f"`{shown}` did not finish within {SYSTEMCTL_TIMEOUT:.0f}s"
                               ) from None
        if r.returncode != 0:
            msg = _one_line(r.stderr) or _one_line(r.stdout) or "no message"
            raise ServiceError(f"`{shown}` failed (exit {r.returncode}): {msg}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    """Temporary name, fsync, rename, fsync the directory; mode 0644 whatever the umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)
            data = text.encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _os_problem(path: Path, action: str, exc: OSError, user: bool) -> ServiceError:
    hint = ""
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and not user:
        hint = " (run as root, or install a user unit with --user)"
    return ServiceError(f"cannot {action} {path}: {exc.strerror}{hint}")


def _check_executable(argv: list[str]) -> None:
    exe = argv[0]
    if not os.path.isabs(exe):
        raise ServiceError(f"{exe}: the swarm-maint executable must be an absolute path")
    if not os.path.exists(exe):
        raise ServiceError(f"{exe}: the swarm-maint executable does not exist")
    if not _is_executable_file(exe):
        raise ServiceError(f"{exe}: not an executable file")


def install(unit_dir: str | os.PathLike[str], executable: Executable,
            config_file: str | os.PathLike[str] | None, state_dir: str | os.PathLike[str] | None,
            systemctl: Sequence[str] = ("systemctl",), enable: bool = True, start: bool = True,
            user: bool = False) -> InstallResult:
    """Write the unit into ``unit_dir``, reload systemd, enable and start it.

    The config file must load (``ConfigError``, exit 2, otherwise) and the executable must
    exist. A fresh unit is enabled with ``enable --now``; a changed unit replacing an earlier
    one is enabled and restarted so that the running agent picks it up. If a systemctl
    command fails the earlier state is restored (the new unit disabled and removed, or the
    previous file put back) and systemd reloaded before the error is raised.
    """
    from ..config import Config, load_config

    argv = _argv(executable)
    _check_executable(argv)
    cfg = Config()
    if config_file is not None:
        config_file = os.path.abspath(config_file)
        cfg = load_config(config_file)
    text = render_unit(argv, config_file, state_dir, user)
    warnings = []
    if state_dir is not None and Path(os.path.abspath(state_dir)) != cfg.agent.resolved_state_dir():
        warnings.append(
            f"the agent keeps its state in {os.path.abspath(state_dir)} but commands run with "
            f"{'this config' if config_file else 'no config'} read "
            f"{cfg.agent.resolved_state_dir()}; set agent.state_dir = "
            f'"{os.path.abspath(state_dir)}" in the config so that both agree')
    exec_start = exec_start_argv(argv, config_file, state_dir)

    unit_dir = Path(os.path.abspath(unit_dir))
    path = unit_dir / UNIT_NAME
    try:
        previous: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        previous = None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServiceError(f"cannot read the existing {path}: {exc}") from None
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, text)
    except OSError as exc:
        raise _os_problem(path, "write", exc, user) from None

    restart = previous is not None and previous != text
    run = _Systemctl(systemctl, user)
    try:
        run("daemon-reload")
        if enable:
            run("enable", *(["--now"] if start and not restart else []), UNIT_NAME)
        if start and (restart or not enable):
            run("restart" if restart else "start", UNIT_NAME)
    except ServiceError as exc:
        undone = _roll_back(path, previous, run, disable=enable and previous is None)
        raise ServiceError(f"{exc}; {undone}") from None
    return InstallResult(path, user, exec_start, enabled=enable, started=start,
                         replaced=previous is not None, commands=run.ran, warnings=warnings)


def _roll_back(path: Path, previous: str | None, run: _Systemctl, disable: bool) -> str:
    """Put back what was there before ``install``; says what it did, for the error line."""
    problems = []
    if disable:
        try:
            run("disable", UNIT_NAME)
        except ServiceError as exc:
            problems.append(str(exc))
    try:
        if previous is None:
            path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
            done = f"{path} was removed again"
        else:
            _write_atomic(path, previous)
            done = f"the previous {path} was put back"
    except OSError as exc:
        problems.append(f"cannot restore {path}: {exc.strerror}")
        done = f"{path} could not be restored"
    try:
        run("daemon-reload")
    except ServiceError as exc:
        problems.append(str(exc))
    return done + (f" (while undoing: {'; '.join(problems)})" if problems else "")


def uninstall(unit_dir: str | os.PathLike[str], systemctl: Sequence[str] = ("systemctl",),
              user: bool = False) -> UninstallResult:
    """Stop and disable the unit, remove its file, reload systemd."""
    path = Path(os.path.abspath(unit_dir)) / UNIT_NAME
    if not path.is_file():
        hint = ""
        if not user and (default_unit_dir(True) / UNIT_NAME).is_file():
            hint = "; a user unit is installed: use --user"
        elif user and (SYSTEM_UNIT_DIR / UNIT_NAME).is_file():
            hint = "; a system unit is installed: leave out --user"
        raise ServiceError(f"{path}: {UNIT_NAME} is not installed there{hint}")
    run = _Systemctl(systemctl, user)
    run("disable", "--now", UNIT_NAME)
    try:
        path.unlink()
        _fsync_dir(path.parent)
    except OSError as exc:
        raise _os_problem(path, "remove", exc, user) from None
    run("daemon-reload")
    return UninstallResult(path, user, commands=run.ran)
