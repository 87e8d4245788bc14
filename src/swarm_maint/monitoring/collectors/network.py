"""Per-interface traffic from <proc>/net/dev, link state and speed from <sys>/class/net."""

from __future__ import annotations

import re

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..collector import CollectorContext, CollectorStatus
from ._procfs import DeltaTracker, non_empty, read_text

__all__ = ["NetworkCollector", "create"]

# (column in /proc/net/dev after the "iface:", counter name, HELP)
_COUNTERS = (
    (0, "swarm_network_receive_bytes_total", "Bytes received."),
    (1, "swarm_network_receive_packets_total", "Packets received."),
    (2, "swarm_network_receive_errors_total", "Receive errors."),
    (3, "swarm_network_receive_drop_total", "Received packets dropped."),
    (8, "swarm_network_transmit_bytes_total", "Bytes transmitted."),
    (9, "swarm_network_transmit_packets_total", "Packets transmitted."),
    (10, "swarm_network_transmit_errors_total", "Transmit errors."),
    (11, "swarm_network_transmit_drop_total", "Transmitted packets dropped."),
)
_RX_BYTES, _TX_BYTES = 0, 8
_MBIT = 125_000  # bytes per second in one Mbit/s


class NetworkCollector:
    name = "network"

    def __init__(self, ctx: CollectorContext) -> None:
        self._path = ctx.proc_root / "net" / "dev"
        self._class_net = ctx.sys_root / "class" / "net"
        self._exclude = re.compile(ctx.config.network.exclude_devices)
        self._clock = ctx.clock
        self._rates: DeltaTracker[tuple[str, int]] = DeltaTracker()
        self._status = CollectorStatus()

    def _sysfs(self, device: str, attr: str) -> str | None:
        try:
            return read_text(self._class_net / device / attr).strip()
        except OSError:  # no sysfs entry, or EINVAL from a driver without a speed
            return None

    def collect(self) -> list[Metric]:
        try:
            text = read_text(self._path)
        except OSError as exc:
            self._status = CollectorStatus("unavailable", f"cannot read {self._path}: {exc}")
            return []
        now = self._clock.monotonic()

        counters = [
            (col, CounterMetricFamily(name, help_text, labels=["device"]))
            for col, name, help_text in _COUNTERS
        ]
        rx_rate = GaugeMetricFamily(
            "swarm_network_receive_bytes_per_second",
            "Receive throughput since the previous collection.",
            labels=["device"],
        )
        tx_rate = GaugeMetricFamily(
            "swarm_network_transmit_bytes_per_second",
            "Transmit throughput since the previous collection.",
            labels=["device"],
        )
        up = GaugeMetricFamily(
            "swarm_network_up", "1 when the interface's link is up.", labels=["device"]
        )
        speed = GaugeMetricFamily(
            "swarm_network_speed_bytes",
            "Negotiated link speed in bytes per second.",
            labels=["device"],
        )
        bad_lines = 0
        for line in text.splitlines()[2:]:  # two header lines
            name, sep, rest = line.partition(":")
            if not sep:
                continue
            device = name.strip()
            if self._exclude.search(device):
                continue
            try:
                fields = [int(x) for x in rest.split()]
                for col, fam in counters:
                    fam.add_metric([device], fields[col])
            except (ValueError, IndexError):
                bad_lines += 1
                continue
            for col, rate_fam in ((_RX_BYTES, rx_rate), (_TX_BYTES, tx_rate)):
                r = self._rates.rate((device, col), fields[col], now)
                if r is not None:
                    rate_fam.add_metric([device], r)

            state = self._sysfs(device, "operstate")
            if state is not None:
                is_up = state == "up" or (state == "unknown" and device == "lo")
                up.add_metric([device], 1.0 if is_up else 0.0)
                mbit = self._sysfs(device, "speed")
                if mbit is not None:
                    try:
                        s = int(mbit)
                    except ValueError:
                        s = -1
                    if s >= 0:
                        speed.add_metric([device], s * _MBIT)
        self._rates.commit()

        if bad_lines:
            self._status = CollectorStatus(
                "degraded", f"{bad_lines} unparsable line(s) in {self._path}"
            )
        else:
            self._status = CollectorStatus()
        return non_empty([fam for _, fam in counters] + [rx_rate, tx_rate, up, speed])

    def status(self) -> CollectorStatus:
        return self._status

    def close(self) -> None:
        pass


def create(ctx: CollectorContext) -> NetworkCollector:
    return NetworkCollector(ctx)
