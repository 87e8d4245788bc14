"""CPU time per core and mode, utilization, and kernel activity counters, from <proc>/stat."""

from __future__ import annotations

import os

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..collector import CollectorContext, CollectorStatus
from ._procfs import DeltaTracker, non_empty, read_text

__all__ = ["MODES", "CpuCollector", "create"]

MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
"""The columns of a cpu line that are reported (guest time is already part of user)."""

_IDLE, _IOWAIT = 3, 4


class CpuCollector:
    name = "cpu"

    def __init__(self, ctx: CollectorContext) -> None:
        self._path = ctx.proc_root / "stat"
        self._clock = ctx.clock
        self._tick = float(os.sysconf("SC_CLK_TCK"))
        self._deltas: DeltaTracker[tuple[str, str]] = DeltaTracker()
        self._status = CollectorStatus()

    def _utilization(self, cpu: str, ticks: list[int], now: float) -> float | None:
        """1 - (idle + iowait) / total over the interval, None on the first call or a reset."""
        total = sum(ticks)
        idle = ticks[_IDLE] + (ticks[_IOWAIT] if len(ticks) > _IOWAIT else 0)
        d_total = self._deltas.delta(("total", cpu), total, now)
        d_idle = self._deltas.delta(("idle", cpu), idle, now)
        if d_total is None or d_idle is None or d_total[0] <= 0:
            return None
        return min(1.0, max(0.0, 1.0 - d_idle[0] / d_total[0]))

    def collect(self) -> list[Metric]:
        try:
            text = read_text(self._path)
        except OSError as exc:
            self._status = CollectorStatus("unavailable", f"cannot read {self._path}: {exc}")
            return []
        now = self._clock.monotonic()
        tick = self._tick

        seconds = CounterMetricFamily(
            "swarm_cpu_seconds_total", "CPU time spent per core and mode.", labels=["cpu", "mode"]
        )
        core_util = GaugeMetricFamily(
            "swarm_cpu_core_utilization_ratio",
            "Busy share of one core since the previous collection (0..1).",
            labels=["cpu"],
        )
        out: list[Metric] = [seconds]
        count = 0
        node_util: float | None = None
        scalars: dict[str, int] = {}
        bad_lines = 0

        for line in text.splitlines():
            parts = line.split(maxsplit=2) if line.startswith("intr") else line.split()
            if not parts:
                continue
            key = parts[0]
            try:
                if key.startswith("cpu"):
                    ticks = [int(x) for x in parts[1 : 1 + len(MODES)]]
                    if len(ticks) <= _IDLE:
                        raise ValueError(f"short cpu line {key!r}")
                    if key == "cpu":
                        node_util = self._utilization("", ticks, now)
                        continue
                    cpu = key[3:]
                    count += 1
                    for mode, t in zip(MODES, ticks, strict=False):
                        seconds.add_metric([cpu, mode], t / tick)
                    util = self._utilization(cpu, ticks, now)
                    if util is not None:
                        core_util.add_metric([cpu], util)
                elif key in ("ctxt", "intr", "processes", "procs_blocked"):
                    scalars[key] = int(parts[1])
            except (ValueError, IndexError):
                bad_lines += 1
        self._deltas.commit()

        if node_util is not None:
            out.append(
                GaugeMetricFamily(
                    "swarm_cpu_utilization_ratio",
                    "Busy share of all CPUs since the previous collection (0..1).",
                    value=node_util,
                )
            )
        out.append(core_util)
        out.append(GaugeMetricFamily("swarm_cpus", "Online CPUs.", value=count))
        for key, name, help_text in (
            ("ctxt", "swarm_context_switches_total", "Context switches since boot."),
            ("intr", "swarm_interrupts_total", "Interrupts serviced since boot."),
            ("processes", "swarm_forks_total", "Processes and threads created since boot."),
        ):
            if key in scalars:
                out.append(CounterMetricFamily(name, help_text, value=scalars[key]))
        if "procs_blocked" in scalars:
            out.append(
                GaugeMetricFamily(
                    "swarm_procs_blocked",
                    "Tasks blocked waiting for I/O.",
                    value=scalars["procs_blocked"],
                )
            )

        if count == 0:
            self._status = CollectorStatus("degraded", f"no per-CPU lines in {self._path}")
        elif bad_lines:
            self._status = CollectorStatus(
                "degraded", f"{bad_lines} unparsable line(s) in {self._path}"
            )
        else:
            self._status = CollectorStatus()
        return non_empty(out)

    def status(self) -> CollectorStatus:
        return self._status

    def close(self) -> None:
        pass


def create(ctx: CollectorContext) -> CpuCollector:
    return CpuCollector(ctx)
