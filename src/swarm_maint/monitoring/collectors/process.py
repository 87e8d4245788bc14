"""Resource use of the agent's own process, through psutil."""

from __future__ import annotations

import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..collector import CollectorContext, CollectorStatus

__all__ = ["ProcessCollector", "create"]


class ProcessCollector:
    name = "process"

    def __init__(self, ctx: CollectorContext) -> None:
        self._proc = psutil.Process()
        self._status = CollectorStatus()

    def collect(self) -> list[Metric]:
        try:
            with self._proc.oneshot():
                cpu = self._proc.cpu_times()
                mem = self._proc.memory_info()
                fds = self._proc.num_fds()
                threads = self._proc.num_threads()
                started = self._proc.create_time()
        except (psutil.Error, OSError) as exc:
            self._status = CollectorStatus("unavailable", f"cannot read own process: {exc}")
            return []
        self._status = CollectorStatus()
        seconds = CounterMetricFamily(
            "swarm_agent_cpu_seconds_total", "CPU time used by the agent.", labels=["mode"]
        )
        seconds.add_metric(["user"], cpu.user)
        seconds.add_metric(["system"], cpu.system)
        return [
            seconds,
            GaugeMetricFamily(
                "swarm_agent_resident_memory_bytes", "Agent resident set size.", value=mem.rss
            ),
            GaugeMetricFamily(
                "swarm_agent_virtual_memory_bytes", "Agent virtual memory size.", value=mem.vms
            ),
            GaugeMetricFamily("swarm_agent_open_fds", "Agent open file descriptors.", value=fds),
            GaugeMetricFamily("swarm_agent_threads", "Agent threads.", value=threads),
            GaugeMetricFamily(
                "swarm_agent_start_time_seconds",
                "Agent start time, seconds since the epoch.",
                value=started,
            ),
        ]

    def status(self) -> CollectorStatus:
        return self._status

    def close(self) -> None:
        pass


def create(ctx: CollectorContext) -> ProcessCollector:
    return ProcessCollector(ctx)
