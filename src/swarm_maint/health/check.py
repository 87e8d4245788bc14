"""The ``HealthCheck`` plugin protocol, its result type and the context checks are built from.

A check looks at one aspect of the node and returns a ``CheckResult``: a status with
node-problem-detector / Nagios meaning (OK, WARNING, CRITICAL, UNKNOWN), one line a person
can act on, the recommended action, and details for scripts. Checks should be cheap and
must not raise for a condition of the node; the runner turns an exception or a timeout
into UNKNOWN anyway.

GPU checks do not call NVML themselves: they judge the latest metrics frame the agent
already collected (``ctx.frame()``), so a check costs no extra driver calls.

Plugins register a factory in the ``swarm_maint.checks`` entry-point group:
``create(ctx: HealthContext) -> list[HealthCheck]``; built-ins are loaded the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ..clock import Clock, SystemClock
from ..config import HealthConfig
from ..monitoring.hub import Frame

__all__ = [
    "ACTIONS",
    "STATUS_CODES",
    "Action",
    "CheckResult",
    "FrameSamples",
    "HealthCheck",
    "HealthContext",
    "Status",
    "gpus_idle",
    "worst",
]

Status = Literal["OK", "WARNING", "CRITICAL", "UNKNOWN"]
STATUS_CODES: dict[str, int] = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}
Action = Literal["none", "restart_workload", "reset_gpu", "reboot", "drain_node",
                 "replace_hardware", "investigate"]
ACTIONS: tuple[str, ...] = ("none", "restart_workload", "reset_gpu", "reboot", "drain_node",
                            "replace_hardware", "investigate")
_SEVERITY = {"OK": 0, "UNKNOWN": 1, "WARNING": 2, "CRITICAL": 3}
_ACTION_RANK = {a: i for i, a in enumerate(
    ("none", "investigate", "restart_workload", "reset_gpu", "drain_node", "reboot",
     "replace_hardware"))}


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: Status
    message: str
    action: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "message": self.message,
                "action": self.action, "details": self.details}


def worst(results: list[tuple[Status, str, str | None]]) -> tuple[Status, str, str | None]:
    """Combine per-item findings (status, message, action) into one: the most severe
    status, its messages joined, and the strongest recommended action."""
    if not results:
        return "OK", "", None
    top = max(results, key=lambda r: _SEVERITY[r[0]])[0]
    msgs = [m for s, m, _ in results if s == top and m]
    actions = [a for s, _, a in results if s != "OK" and a]
    action = max(actions, key=lambda a: _ACTION_RANK.get(a, 0)) if actions else None
    return top, "; ".join(msgs), action


class FrameSamples:
    """Index of one metrics frame: name -> [(labels, value)]."""

    def __init__(self, frame: Frame) -> None:
        self.timestamp = frame.timestamp
        self.statuses = frame.statuses
        self._by_name: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for fam in frame.families:
            for s in fam.samples:
                self._by_name[s.name].append((s.labels, s.value))

    def get(self, name: str) -> list[tuple[dict[str, str], float]]:
        return self._by_name.get(name, [])

    def one(self, name: str) -> float | None:
        rows = self._by_name.get(name)
        return rows[0][1] if rows else None


def gpus_idle(frame: FrameSamples, threshold: float = 0.05) -> tuple[bool, str]:
    """(idle, why not): every GPU under ``threshold`` utilization in this frame."""
    busy = [(labels.get("gpu", "?"), v) for labels, v in frame.get("swarm_gpu_utilization_ratio")
            if v >= threshold]
    if not busy:
        return True, ""
    shown = ", ".join(f"GPU {g} at {v:.0%}" for g, v in busy)
    return False, f"node not idle ({shown}); drain it first"


@dataclass
class HealthContext:
    """What checks may depend on; OS boundaries are injectable for tests."""

    config: HealthConfig
    frame: Callable[[], FrameSamples]
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    clock: Clock = field(default_factory=SystemClock)
    # the XID tracker (set by the runner when a kernel log source is configured)
    xids: Any = None
    # free-form services other components add (the store, the idle gate …)
    extras: dict[str, Any] = field(default_factory=dict)


class HealthCheck(Protocol):
    """One check. ``level`` 1 is passive (cheap, runs continuously); 2 is an active
    diagnostic (runs only on demand or when the node is idle or drained)."""

    name: str
    level: int
    interval: float
    timeout: float

    def run(self) -> CheckResult:
        ...
