"""Block device I/O counters, throughput and utilization, from <proc>/diskstats."""

from __future__ import annotations

import re

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..collector import CollectorContext, CollectorStatus
from ._procfs import DeltaTracker, non_empty, read_text

__all__ = ["DiskCollector", "create"]

SECTOR = 512  # diskstats counts 512-byte sectors whatever the device's block size

# Columns of a diskstats line (0 = major, 1 = minor, 2 = name).
_READS, _READ_SECTORS, _READ_MS = 3, 5, 6
_WRITES, _WRITE_SECTORS, _WRITE_MS = 7, 9, 10
_IO_NOW, _IO_MS = 11, 12
_NEEDED = _IO_MS - 2  # values from column 3 up to and including io_ms

# (column, metric name, scale to base units, HELP)
_COUNTERS = (
    (_READS, "swarm_disk_reads_completed_total", 1.0, "Reads completed."),
    (_READ_SECTORS, "swarm_disk_read_bytes_total", float(SECTOR), "Bytes read."),
    (_READ_MS, "swarm_disk_read_time_seconds_total", 1e-3, "Time spent on reads."),
    (_WRITES, "swarm_disk_writes_completed_total", 1.0, "Writes completed."),
    (_WRITE_SECTORS, "swarm_disk_written_bytes_total", float(SECTOR), "Bytes written."),
    (_WRITE_MS, "swarm_disk_write_time_seconds_total", 1e-3, "Time spent on writes."),
    (_IO_MS, "swarm_disk_io_time_seconds_total", 1e-3, "Time the device had I/O in flight."),
)


class DiskCollector:
    name = "disk"

    def __init__(self, ctx: CollectorContext) -> None:
        self._path = ctx.proc_root / "diskstats"
        self._exclude = re.compile(ctx.config.disk.exclude_devices)
        self._clock = ctx.clock
        self._rates: DeltaTracker[tuple[str, int]] = DeltaTracker()
        self._status = CollectorStatus()

    def collect(self) -> list[Metric]:
        try:
            text = read_text(self._path)
        except OSError as exc:
            self._status = CollectorStatus("unavailable", f"cannot read {self._path}: {exc}")
            return []
        now = self._clock.monotonic()

        counters = [
            (col, scale, CounterMetricFamily(name, help_text, labels=["device"]))
            for col, name, scale, help_text in _COUNTERS
        ]
        io_now = GaugeMetricFamily(
            "swarm_disk_io_now", "I/O requests currently in flight.", labels=["device"]
        )
        read_rate = GaugeMetricFamily(
            "swarm_disk_read_bytes_per_second",
            "Read throughput since the previous collection.",
            labels=["device"],
        )
        write_rate = GaugeMetricFamily(
            "swarm_disk_write_bytes_per_second",
            "Write throughput since the previous collection.",
            labels=["device"],
        )
        util = GaugeMetricFamily(
            "swarm_disk_utilization_ratio",
            "Share of the interval the device was busy (0..1).",
            labels=["device"],
        )
        bad_lines = 0
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            device = parts[2]
            if self._exclude.match(device):
                continue
            try:
                fields = [int(x) for x in parts[3 : 3 + _NEEDED]]
                if len(fields) < _NEEDED:
                    raise ValueError("short line")
            except ValueError:
                bad_lines += 1
                continue
            label = [device]
            for col, scale, fam in counters:
                fam.add_metric(label, fields[col - 3] * scale)
            io_now.add_metric(label, fields[_IO_NOW - 3])
            rates = self._rates
            r = rates.rate((device, _READ_SECTORS), fields[_READ_SECTORS - 3], now)
            if r is not None:
                read_rate.add_metric(label, r * SECTOR)
            r = rates.rate((device, _WRITE_SECTORS), fields[_WRITE_SECTORS - 3], now)
            if r is not None:
                write_rate.add_metric(label, r * SECTOR)
            r = rates.rate((device, _IO_MS), fields[_IO_MS - 3], now)
            if r is not None:
                util.add_metric(label, min(1.0, r * 1e-3))
        self._rates.commit()

        if bad_lines:
            self._status = CollectorStatus(
                "degraded", f"{bad_lines} unparsable line(s) in {self._path}"
            )
        else:
            self._status = CollectorStatus()
        return non_empty(
            [fam for _, _, fam in counters] + [io_now, read_rate, write_rate, util]
        )

    def status(self) -> CollectorStatus:
        return self._status

    def close(self) -> None:
        pass


def create(ctx: CollectorContext) -> DiskCollector:
    return DiskCollector(ctx)
