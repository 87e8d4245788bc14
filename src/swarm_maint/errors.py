"""One error tree for the whole project; every class carries its CLI exit code.

    SwarmMaintError            exit 1   anything the project raises on purpose
    ├── ConfigError            exit 2   invalid configuration file or value
    ├── UsageError             exit 2   bad command-line or API input
    ├── StateError             exit 4   the state directory or database cannot be used
    ├── AgentUnreachableError  exit 5   no agent answers at the configured address
    ├── PluginError            exit 6   a configured plugin cannot be loaded
    ├── ServiceError           exit 7   the systemd unit cannot be installed or removed
    └── FileAccessError        exit 9   a file or directory the command needs cannot be
                                        used (permission denied, not a directory, …)

The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``;
tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import os

__all__ = [
    "AgentUnreachableError",
    "ConfigError",
    "FileAccessError",
    "NotFoundError",
    "PluginError",
    "ServiceError",
    "StateError",
    "SwarmMaintError",
    "UsageError",
]


class SwarmMaintError(Exception):
    """Base of every error raised on purpose by swarm-maint."""

    exit_code: int = 1


class ConfigError(SwarmMaintError):
    """The configuration is invalid: names the file, the key and the problem."""

    exit_code = 2


class UsageError(SwarmMaintError):
    """A command-line argument or API parameter is invalid."""

    exit_code = 2


class NotFoundError(UsageError):
    """A named thing (silence, maintenance window) that does not exist: exit 2 on the
    command line, 404 in the API."""


class StateError(SwarmMaintError):
    """The state directory or database cannot be opened or migrated."""

    exit_code = 4


class AgentUnreachableError(SwarmMaintError):
    """No agent answers at the configured address."""

    exit_code = 5


class PluginError(SwarmMaintError):
    """A plugin named in the configuration cannot be found or loaded."""

    exit_code = 6


class ServiceError(SwarmMaintError):
    """The systemd unit cannot be written, removed, enabled or started (names the command)."""

    exit_code = 7


class FileAccessError(SwarmMaintError):
    """An operating-system error on a file or directory the command needed, that no
    narrower error explains; the CLI turns any OSError that reaches it into this."""

    exit_code = 9

    @classmethod
    def from_os_error(cls, exc: OSError) -> FileAccessError:
        what = exc.strerror or str(exc)
        if exc.filename is None:
            return cls(what)
        names = os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            names += f" -> {os.fsdecode(exc.filename2)}"
        return cls(f"{names}: {what}")
