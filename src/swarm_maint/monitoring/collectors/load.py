"""Load average and runnable/total task counts, from <proc>/loadavg."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily, Metric

from ..collector import CollectorContext, CollectorStatus

__all__ = ["LoadCollector", "create"]


class LoadCollector:
    name = "load"

    def __init__(self, ctx: CollectorContext) -> None:
        self._path = ctx.proc_root / "loadavg"
        self._status = CollectorStatus()

    def collect(self) -> list[Metric]:
        try:
            fields = self._path.read_text().split()
            load1, load5, load15 = (float(x) for x in fields[:3])
            running, total = (int(x) for x in fields[3].split("/"))
        except (OSError, ValueError, IndexError) as exc:
            self._status = CollectorStatus("unavailable", f"cannot read {self._path}: {exc}")
            return []
        self._status = CollectorStatus()
        out: list[Metric] = []
        for name, value, window in (
            ("swarm_load1", load1, "1 minute"),
            ("swarm_load5", load5, "5 minutes"),
            ("swarm_load15", load15, "15 minutes"),
        ):
            out.append(GaugeMetricFamily(name, f"Load average over {window}.", value=value))
        out.append(GaugeMetricFamily("swarm_procs_running", "Runnable tasks.", value=running))
        out.append(
            GaugeMetricFamily("swarm_procs_existing", "Existing tasks (threads).", value=total)
        )
        return out

    def status(self) -> CollectorStatus:
        return self._status

    def close(self) -> None:
        pass


def create(ctx: CollectorContext) -> LoadCollector:
    return LoadCollector(ctx)
