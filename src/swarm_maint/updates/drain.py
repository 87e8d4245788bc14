"""The ``Drainer`` protocol: taking the node out of service before a disruptive update.

``none`` does nothing (a node whose workloads tolerate the interruption); ``command`` runs
the configured commands (a cordon-and-drain script, a scheduler call). Fleet mode adds a
Ray drainer. Both calls must be idempotent: a resumed runbook may repeat them.
"""

from __future__ import annotations

from typing import Protocol

from ..config import UpdatesConfig
from .commands import run_command

__all__ = ["CommandDrainer", "Drainer", "NoDrainer", "build_drainer"]


class Drainer(Protocol):
    name: str

    def drain(self, reason: str) -> str:
        """Take the node out of service; returns what it did, for the history."""
        ...

    def undrain(self) -> str:
        """Put it back in service."""
        ...


class NoDrainer:
    name = "none"

    def drain(self, reason: str) -> str:
        return "no drainer configured (updates.drainer = none)"

    def undrain(self) -> str:
        return "no drainer configured"


class CommandDrainer:
    name = "command"

    def __init__(self, drain: list[str], undrain: list[str], timeout: float = 1800.0) -> None:
        self._drain, self._undrain, self._timeout = drain, undrain, timeout

    def drain(self, reason: str) -> str:
        out = run_command(self._drain, "drain", self._timeout)
        return f"drained: {' '.join(self._drain)}" + (f" ({out[-200:]})" if out else "")

    def undrain(self) -> str:
        if not self._undrain:
            return "no undrain_command configured"
        out = run_command(self._undrain, "undrain", self._timeout)
        return f"undrained: {' '.join(self._undrain)}" + (f" ({out[-200:]})" if out else "")


def build_drainer(cfg: UpdatesConfig) -> Drainer:
    if cfg.drainer == "command":
        return CommandDrainer(cfg.drain_command, cfg.undrain_command)
    return NoDrainer()
