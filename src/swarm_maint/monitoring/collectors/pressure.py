"""Pressure stall information (PSI) for cpu, memory and io, from <proc>/pressure/*."""

from __future__ import annotations

import errno

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..collector import CollectorContext, CollectorStatus
from ._procfs import non_empty, read_text

__all__ = ["NO_PSI", "RESOURCES", "PressureCollector", "create"]

RESOURCES = ("cpu", "memory", "io")
NO_PSI = "kernel has no pressure stall information (PSI)"


def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """{"some"|"full": {"avg10": .., "avg60": .., "avg300": .., "total": ..}}."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        kind, fields = parts[0], parts[1:]
        values: dict[str, float] = {}
        for field in fields:
            k, _, v = field.partition("=")
            values[k] = float(v)
        out[kind] = values
    return out


class PressureCollector:
    name = "pressure"

    def __init__(self, ctx: CollectorContext) -> None:
        self._dir = ctx.proc_root / "pressure"
        self._status = CollectorStatus()

    def collect(self) -> list[Metric]:
        waiting = CounterMetricFamily(
            "swarm_pressure_waiting_seconds_total",
            "Time at least one task was stalled on the resource (PSI some).",
            labels=["resource"],
        )
        stalled = CounterMetricFamily(
            "swarm_pressure_stalled_seconds_total",
            "Time all non-idle tasks were stalled on the resource at once (PSI full).",
            labels=["resource"],
        )
        avg10 = GaugeMetricFamily(
            "swarm_pressure_some_avg10_ratio",
            "Share of the last 10 seconds some task was stalled on the resource (0..1).",
            labels=["resource"],
        )
        problems: list[str] = []
        unsupported = 0
        for resource in RESOURCES:
            path = self._dir / resource
            try:
                psi = parse_psi(read_text(path))
                some = psi["some"]
                waiting.add_metric([resource], some["total"] / 1e6)
                avg10.add_metric([resource], some["avg10"] / 100.0)
                full = psi.get("full")
                if full is not None and "total" in full:
                    stalled.add_metric([resource], full["total"] / 1e6)
            except FileNotFoundError:
                if not self._dir.is_dir():
                    self._status = CollectorStatus("unavailable", NO_PSI)
                    return []
                problems.append(f"{path} is missing")
            except OSError as exc:
                # psi=0 on the kernel command line: the files exist but reads fail.
                if exc.errno == errno.EOPNOTSUPP:
                    unsupported += 1
                problems.append(f"cannot read {path}: {exc}")
            except (KeyError, ValueError) as exc:
                problems.append(f"cannot parse {path}: {exc!r}")

        if unsupported == len(RESOURCES):
            self._status = CollectorStatus("unavailable", f"{NO_PSI}: disabled at boot")
            return []
        if not problems:
            self._status = CollectorStatus()
        else:
            self._status = CollectorStatus(
                "degraded" if waiting.samples else "unavailable", "; ".join(problems)
            )
        return non_empty([waiting, stalled, avg10])

    def status(self) -> CollectorStatus:
        return self._status

    def close(self) -> None:
        pass


def create(ctx: CollectorContext) -> PressureCollector:
    return PressureCollector(ctx)
