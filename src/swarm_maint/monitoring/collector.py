"""The ``Collector`` plugin protocol and the context every collector is built from.

A collector turns one reading of the node into Prometheus metric families
(``prometheus_client.core.Metric`` objects, in base units). The hub calls ``collect()``
once per interval from its own thread and caches the result; scrapes never trigger a
collection. A collector must not raise for an expected condition of the node (no GPU,
a missing /proc file): it reports that through ``status()`` and keeps going.

Plugins register a factory in the ``swarm_maint.collectors`` entry-point group:
``create(ctx: CollectorContext) -> Collector``. Built-ins are loaded the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from prometheus_client.core import Metric

from ..clock import Clock, SystemClock
from ..config import MonitoringConfig

__all__ = [
    "Collector",
    "CollectorContext",
    "CollectorStatus",
    "CollectorUnavailable",
    "Metric",
]

StatusState = Literal["ok", "degraded", "unavailable", "error"]


@dataclass(frozen=True)
class CollectorStatus:
    """What a collector says about itself in /api/v1/status.

    ``ok``: everything read; ``degraded``: some readings missing (a lost GPU);
    ``unavailable``: nothing to collect on this node (no NVML, no PSI);
    ``error``: the last collect() raised unexpectedly.
    """

    state: StatusState = "ok"
    message: str = ""


class CollectorUnavailable(Exception):
    """Raised by a factory when the collector cannot run on this node at all.

    The registry skips the collector quietly when it is only a default and reports a
    PluginError when the configuration asked for it explicitly.
    """


@dataclass(frozen=True)
class CollectorContext:
    """Everything a collector may depend on; OS boundaries are injectable for tests."""

    config: MonitoringConfig = field(default_factory=MonitoringConfig)
    clock: Clock = field(default_factory=SystemClock)

    @property
    def proc_root(self) -> Path:
        return Path(self.config.proc_root)

    @property
    def sys_root(self) -> Path:
        return Path(self.config.sys_root)

    @property
    def nvml_library(self) -> str:
        return self.config.nvml_library


class Collector(Protocol):
    """One source of metrics. See the module docstring for the contract."""

    name: str

    def collect(self) -> list[Metric]:
        """Read the node now and return metric families (base units, HELP text set)."""
        ...

    def status(self) -> CollectorStatus:
        """The collector's own health, as of the last collect()."""
        ...

    def close(self) -> None:
        """Release resources (file handles, NVML); called once at agent shutdown."""
        ...
