"""The node summary behind ``GET /api/v1/status`` and ``swarm-maint status``.

Built from one collection frame only, so it is consistent and costs no extra reading.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .. import __version__
from ..hostname import local_hostname
from .hub import Frame, MetricsHub

__all__ = ["node_summary"]

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _index(frame: Frame) -> Samples:
    out: Samples = defaultdict(list)
    for fam in frame.families:
        for s in fam.samples:
            out[s.name].append((s.labels, s.value))
    return out


def _one(samples: Samples, name: str) -> float | None:
    rows = samples.get(name)
    return rows[0][1] if rows else None


def _sum(samples: Samples, name: str, skip_device: str | None = None) -> float | None:
    rows = samples.get(name)
    if not rows:
        return None
    return sum(v for labels, v in rows if labels.get("device") != skip_device)


def _by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {labels.get(label, ""): v for labels, v in samples.get(name, [])}


def _gpus(samples: Samples, frame: Frame) -> dict[str, Any]:
    status = frame.statuses.get("gpu")
    available = _one(samples, "swarm_gpu_nvml_available")
    devices: dict[str, dict[str, Any]] = {}
    fields = {
        "swarm_gpu_utilization_ratio": "utilization",
        "swarm_gpu_memory_used_bytes": "memory_used_bytes",
        "swarm_gpu_memory_total_bytes": "memory_total_bytes",
        "swarm_gpu_temperature_celsius": "temperature_celsius",
        "swarm_gpu_power_watts": "power_watts",
        "swarm_gpu_lost": "lost",
    }
    for metric, key in fields.items():
        for labels, v in samples.get(metric, []):
            idx = labels.get("gpu", "?")
            dev = devices.setdefault(
                idx,
                {
                    "index": int(idx) if idx.isdigit() else idx,
                    "name": labels.get("name", ""),
                    "uuid": labels.get("uuid", ""),
                    "pci_bus_id": labels.get("pci_bus_id", ""),
                },
            )
            dev[key] = bool(v) if key == "lost" else v
    return {
        "collector": "gpu" in frame.statuses,
        "nvml_available": bool(available) if available is not None else False,
        "count": int(_one(samples, "swarm_gpus") or 0),
        "state": status.state if status else "disabled",
        "message": status.message if status else "gpu collector not enabled",
        "devices": [devices[k] for k in sorted(devices, key=lambda s: (len(s), s))],
    }


def node_summary(hub: MetricsHub) -> dict[str, Any]:
    frame = hub.latest()
    s = _index(frame)
    filesystems = []
    sizes = s.get("swarm_filesystem_size_bytes", [])
    avail = {lb.get("mountpoint"): v for lb, v in s.get("swarm_filesystem_avail_bytes", [])}
    free = {lb.get("mountpoint"): v for lb, v in s.get("swarm_filesystem_free_bytes", [])}
    ro = {lb.get("mountpoint"): v for lb, v in s.get("swarm_filesystem_readonly", [])}
    for labels, size in sizes:
        mp = labels.get("mountpoint", "")
        used = size - free.get(mp, 0.0)
        usable = used + avail.get(mp, 0.0)  # df's Use%: root-reserved blocks count as full
        filesystems.append(
            {
                "mountpoint": mp,
                "device": labels.get("device", ""),
                "fstype": labels.get("fstype", ""),
                "size_bytes": size,
                "avail_bytes": avail.get(mp),
                "used_ratio": used / usable if usable else None,
                "readonly": bool(ro.get(mp, 0.0)),
            }
        )
    return {
        "node": hub.node_name,
        "hostname": local_hostname(),
        "version": __version__,
        "uptime_seconds": round(hub.uptime(), 3),
        "collected_at": frame.timestamp or None,
        "interval_seconds": hub.interval,
        "cpu": {
            "count": _one(s, "swarm_cpus"),
            "utilization": _one(s, "swarm_cpu_utilization_ratio"),
            "load1": _one(s, "swarm_load1"),
            "load5": _one(s, "swarm_load5"),
            "load15": _one(s, "swarm_load15"),
        },
        "memory": {
            "total_bytes": _one(s, "swarm_memory_total_bytes"),
            "used_bytes": _one(s, "swarm_memory_used_bytes"),
            "available_bytes": _one(s, "swarm_memory_available_bytes"),
            "used_ratio": _one(s, "swarm_memory_used_ratio"),
            "swap_total_bytes": _one(s, "swarm_swap_total_bytes"),
            "swap_used_bytes": _one(s, "swarm_swap_used_bytes"),
        },
        "network": {
            "receive_bytes_per_second": _sum(s, "swarm_network_receive_bytes_per_second", "lo"),
            "transmit_bytes_per_second": _sum(s, "swarm_network_transmit_bytes_per_second", "lo"),
        },
        "disk": {
            "read_bytes_per_second": _sum(s, "swarm_disk_read_bytes_per_second"),
            "write_bytes_per_second": _sum(s, "swarm_disk_write_bytes_per_second"),
        },
        "filesystems": sorted(filesystems, key=lambda f: str(f["mountpoint"])),
        "gpu": _gpus(s, frame),
        "agent": {
            "resident_memory_bytes": _one(s, "swarm_agent_resident_memory_bytes"),
            "cpu_seconds": sum(_by_label(s, "swarm_agent_cpu_seconds_total", "mode").values())
            or None,
        },
        "collectors": [
            {
                "name": name,
                "state": st.state,
                "message": st.message,
                "duration_seconds": frame.durations.get(name),
            }
            for name, st in frame.statuses.items()
        ],
    }
