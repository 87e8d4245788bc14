"""Running the agent as a service: the systemd unit that ships with the package.

``render_unit`` fills the shipped template ``swarm-maint.service``; ``install`` writes it
atomically and enables it with ``systemctl``, ``uninstall`` disables and removes it. Errors are
``ServiceError`` (exit 7), or ``ConfigError`` (exit 2) for a config file that does not load.
"""

from __future__ import annotations

from .systemd import (
    SYSTEM_STATE_DIR,
    SYSTEM_UNIT_DIR,
    UNIT_NAME,
    InstallResult,
    UninstallResult,
    default_executable,
    default_unit_dir,
    exec_start_argv,
    install,
    quote_arg,
    render_unit,
    split_exec_start,
    uninstall,
    unit_state_dir,
)

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
