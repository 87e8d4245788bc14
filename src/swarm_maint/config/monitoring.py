"""``[monitoring]``: metric collection, the collectors' filters and the metric history."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import Duration, _check_regex, _Section

__all__ = [
    "BUILTIN_COLLECTORS",
    "DiskConfig",
    "FilesystemConfig",
    "HistoryConfig",
    "MonitoringConfig",
    "NetworkConfig",
]

BUILTIN_COLLECTORS = [
    "cpu",
    "load",
    "memory",
    "pressure",
    "network",
    "disk",
    "filesystem",
    "process",
    "gpu",
]



class HistoryConfig(_Section):
    memory_window: Duration = Field(
        900.0, description="How long raw samples are kept in memory (at the collection interval)."
    )
    resolution: Duration = Field(
        60.0, description="Step of the downsampled history written to SQLite (avg/min/max/last)."
    )
    retention: Duration = Field(604800.0, description="How long downsampled history is kept.")
    exclude: list[str] = Field(
        default_factory=lambda: ["swarm_cpu_seconds_total", "swarm_cpu_core_utilization_ratio"],
        description="Metric names kept in memory only, never written to SQLite "
        "(high-cardinality families).",
    )

    @field_validator("memory_window", "resolution", "retention")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be greater than zero")
        return v


class FilesystemConfig(_Section):
    exclude_fstypes: list[str] = Field(
        default_factory=lambda: [
            "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs",
            "devpts", "devtmpfs", "fusectl", "hugetlbfs", "iso9660", "mqueue", "nsfs",
            "overlay", "proc", "procfs", "pstore", "rpc_pipefs", "securityfs", "selinuxfs",
            "squashfs", "sysfs", "tracefs", "nfsd", "ramfs", "efivarfs",
        ],
        description="Filesystem types that are not reported.",
    )
    exclude_mountpoints: str = Field(
        r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+"
        r"|var/lib/kubelet/.+)($|/)",
        description="Regular expression of mount points that are not reported.",
    )
    statvfs_timeout: Duration = Field(
        1.0,
        description="A mount whose statvfs takes longer (a dead NFS server) is marked stuck "
        "and skipped until it answers again.",
    )

    @field_validator("exclude_mountpoints")
    @classmethod
    def _rx(cls, v: str) -> str:
        return _check_regex(v)


class NetworkConfig(_Section):
    exclude_devices: str = Field(
        r"^(veth|cali|flannel|cni|lxc|tap)",
        description="Regular expression of interfaces that are not reported "
        "(per-container virtual links).",
    )

    @field_validator("exclude_devices")
    @classmethod
    def _rx(cls, v: str) -> str:
        return _check_regex(v)


class DiskConfig(_Section):
    exclude_devices: str = Field(
        r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$",
        description="Regular expression of block devices that are not reported "
        "(partitions, loop and ram devices).",
    )

    @field_validator("exclude_devices")
    @classmethod
    def _rx(cls, v: str) -> str:
        return _check_regex(v)


class MonitoringConfig(_Section):
    interval: Duration = Field(1.0, description="How often every collector runs.")
    collectors: list[str] = Field(
        default_factory=lambda: list(BUILTIN_COLLECTORS),
        description="Collectors to run, by registered name. Collectors named here explicitly "
        "must load; unavailable defaults are skipped quietly.",
    )
    proc_root: str = Field("/proc", description="Root of the proc filesystem to read.")
    sys_root: str = Field("/sys", description="Root of the sys filesystem to read.")
    nvml_library: str = Field(
        "",
        description="Path of libnvidia-ml.so.1; empty means the system's own (dlopen search).",
    )
    history: HistoryConfig = Field(default_factory=HistoryConfig,
                                   description="Recent and downsampled metric history.")
    filesystem: FilesystemConfig = Field(default_factory=FilesystemConfig,
                                         description="Filesystem collector.")
    network: NetworkConfig = Field(default_factory=NetworkConfig,
                                   description="Network collector.")
    disk: DiskConfig = Field(default_factory=DiskConfig, description="Disk I/O collector.")

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v < 0.1:
            raise ValueError("must be at least 100ms")
        return v

    @field_validator("collectors")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({n for n in v if v.count(n) > 1})
        if dup:
            raise ValueError(f"collector listed twice: {', '.join(dup)}")
        return v

    def collectors_explicit(self) -> bool:
        """True when the config named the collectors rather than taking the default list."""
        return "collectors" in self.model_fields_set
