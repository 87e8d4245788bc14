"""Memory and swap usage from <proc>/meminfo, swap and OOM counters from <proc>/vmstat."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..collector import CollectorContext, CollectorStatus
from ._procfs import read_text

__all__ = ["MemoryCollector", "create"]

_VMSTAT_KEYS = frozenset({"pswpin", "pswpout", "oom_kill"})


def parse_meminfo(text: str) -> dict[str, int]:
    """{field: bytes} (fields in kB are converted; unit-less counts are kept as they are)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            v = int(parts[0])
        except ValueError:
            continue
        out[key] = v * 1024 if len(parts) > 1 and parts[1] == "kB" else v
    return out


class MemoryCollector:
    name = "memory"

    def __init__(self, ctx: CollectorContext) -> None:
        self._meminfo_path = ctx.proc_root / "meminfo"
        self._vmstat_path = ctx.proc_root / "vmstat"
        self._status = CollectorStatus()

    def _read_vmstat(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in read_text(self._vmstat_path).splitlines():
            key, _, v = line.partition(" ")
            if key in _VMSTAT_KEYS:
                try:
                    out[key] = int(v)
                except ValueError:
                    continue
        return out

    def collect(self) -> list[Metric]:
        problems: list[str] = []
        out: list[Metric] = []

        mem: dict[str, int] = {}
        try:
            mem = parse_meminfo(read_text(self._meminfo_path))
        except OSError as exc:
            problems.append(f"cannot read {self._meminfo_path}: {exc}")

        def gauge(name: str, help_text: str, value: float) -> None:
            out.append(GaugeMetricFamily(name, help_text, value=value))

        total = mem.get("MemTotal")
        avail = mem.get("MemAvailable")
        if total is not None:
            gauge("swarm_memory_total_bytes", "Usable RAM.", total)
        if avail is not None:
            gauge("swarm_memory_available_bytes",
                  "RAM available for new work without swapping (MemAvailable).", avail)
        for key, name, help_text in (
            ("MemFree", "swarm_memory_free_bytes", "RAM not used at all."),
            ("Buffers", "swarm_memory_buffers_bytes", "RAM used for block device buffers."),
            ("Cached", "swarm_memory_cached_bytes", "RAM used by the page cache."),
        ):
            if key in mem:
                gauge(name, help_text, mem[key])
        if total is not None and avail is not None:
            used = total - avail
            gauge("swarm_memory_used_bytes", "RAM in use (total - available).", used)
            if total > 0:
                gauge("swarm_memory_used_ratio", "Share of RAM in use (0..1).", used / total)
        elif mem:
            problems.append(f"{self._meminfo_path} has no MemTotal/MemAvailable")
        swap_total = mem.get("SwapTotal")
        swap_free = mem.get("SwapFree")
        if swap_total is not None and swap_free is not None:
            gauge("swarm_swap_total_bytes", "Swap space.", swap_total)
            gauge("swarm_swap_free_bytes", "Unused swap space.", swap_free)
            gauge("swarm_swap_used_bytes", "Swap space in use.", swap_total - swap_free)
        if "HardwareCorrupted" in mem:
            gauge("swarm_memory_hardware_corrupted_bytes",
                  "RAM the kernel took out of use after memory errors.",
                  mem["HardwareCorrupted"])

        vm: dict[str, int] = {}
        try:
            vm = self._read_vmstat()
        except OSError as exc:
            problems.append(f"cannot read {self._vmstat_path}: {exc}")
        for key, name, help_text in (
            ("pswpin", "swarm_swap_in_pages_total", "Pages swapped in since boot."),
            ("pswpout", "swarm_swap_out_pages_total", "Pages swapped out since boot."),
            ("oom_kill", "swarm_oom_kills_total", "Processes killed by the OOM killer since boot."),
        ):
            if key in vm:
                out.append(CounterMetricFamily(name, help_text, value=vm[key]))

        if not problems:
            self._status = CollectorStatus()
        else:
            self._status = CollectorStatus(
                "degraded" if out else "unavailable", "; ".join(problems)
            )
        return out

    def status(self) -> CollectorStatus:
        return self._status

    def close(self) -> None:
        pass


def create(ctx: CollectorContext) -> MemoryCollector:
    return MemoryCollector(ctx)
