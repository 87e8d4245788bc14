"""Kernel checks: processes killed by the OOM killer since the previous run."""

from __future__ import annotations

from ...durations import format_duration
from ..check import CheckResult, HealthCheck, HealthContext

__all__ = ["OomCheck", "create"]


class OomCheck:
    """Compares ``swarm_oom_kills_total`` with the value seen at the previous run; the
    first run (and a counter that went backwards) only records the baseline."""

    name = "kernel_oom"
    level = 1

    def __init__(self, ctx: HealthContext) -> None:
        self._ctx = ctx
        self.interval = ctx.config.interval
        self.timeout = ctx.config.timeout
        self._prev: tuple[float, float] | None = None  # (count, monotonic time)

    def run(self) -> CheckResult:
        value = self._ctx.frame().one("swarm_oom_kills_total")
        if value is None:
            return CheckResult(self.name, "UNKNOWN",
                               "swarm_oom_kills_total is not in the latest collection (memory "
                               "collector disabled, or a kernel older than 4.13)")
        now = self._ctx.clock.monotonic()
        prev, self._prev = self._prev, (value, now)
        details = {"oom_kills_total": value}
        if prev is None:
            return CheckResult(self.name, "OK",
                               f"baseline recorded ({value:.0f} OOM kills since boot)",
                               None, details)
        increase = value - prev[0]
        if increase > 0:
            since = format_duration(max(1.0, round(now - prev[1])))
            return CheckResult(
                self.name, "WARNING",
                f"{increase:.0f} process(es) killed by the OOM killer in the last {since}: "
                "see dmesg for the victims; restart the workload with less memory use or a "
                "higher limit", "restart_workload",
                {**details, "increase": increase, "seconds": round(now - prev[1], 3)})
        return CheckResult(self.name, "OK", "no OOM kills since the previous check",
                           None, details)


def create(ctx: HealthContext) -> list[HealthCheck]:
    return [OomCheck(ctx)]
