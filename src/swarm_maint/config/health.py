"""``[health]``: health checks, their thresholds, endpoints, custom checks and overrides."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from .base import Duration, _Section

__all__ = [
    "CheckOverride",
    "CustomCheckConfig",
    "EndpointConfig",
    "HealthConfig",
    "ThresholdsConfig",
]


class EndpointConfig(_Section):
    name: str = Field(..., description="Name of the endpoint in results.")
    host: str = Field(..., description="Host name or address to connect to.")
    port: int = Field(..., ge=1, le=65535, description="TCP port.")
    timeout: Duration = Field(3.0, description="Connect timeout.")
    warn_latency: Duration = Field(0.5, description="Connect time above which it is a WARNING.")


class CustomCheckConfig(_Section):
    name: str = Field(..., description="Name of the check.")
    command: list[str] = Field(..., min_length=1,
                               description="Executable and arguments (no shell).")
    interval: Duration = Field(30.0, description="How often it runs.")
    timeout: Duration = Field(5.0, description="Killed and UNKNOWN after this long.")
    action: str = Field("investigate",
                        description="Recommended action when it is not OK.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", v):
            raise ValueError("use lowercase letters, digits, '.', '_' and '-'")
        return v


class CheckOverride(_Section):
    enabled: bool = Field(True, description="Run this check.")
    interval: Duration | None = Field(None, description="Override the check's interval.")
    failures_to_trip: int | None = Field(None, ge=1,
                                         description="Override health.failures_to_trip.")
    passes_to_clear: int | None = Field(None, ge=1,
                                        description="Override health.passes_to_clear.")


class ThresholdsConfig(_Section):
    disk_used_warning: float = Field(0.85, gt=0, le=1, description="Used share of a "
                                     "filesystem that is a WARNING.")
    disk_used_critical: float = Field(0.95, gt=0, le=1, description="… and a CRITICAL.")
    inodes_used_warning: float = Field(0.85, gt=0, le=1, description="Used share of inodes "
                                       "that is a WARNING.")
    inodes_used_critical: float = Field(0.95, gt=0, le=1, description="… and a CRITICAL.")
    gpu_temperature_warning: float = Field(85.0, description="GPU °C that is a WARNING.")
    gpu_temperature_critical: float = Field(92.0, description="GPU °C that is a CRITICAL.")
    ecc_corrected_warning: int = Field(1000, ge=1, description="Volatile corrected ECC "
                                       "errors that are a WARNING.")
    retired_pages_warning: int = Field(32, ge=1, description="Retired pages per GPU that "
                                       "are a WARNING.")
    retired_pages_critical: int = Field(60, ge=1, description="… and a CRITICAL "
                                        "(the hardware limit is about 64).")
    pcie_replays_per_hour_warning: float = Field(100.0, ge=0, description="PCIe replays per "
                                                 "hour that are a WARNING.")
    clock_offset_warning: Duration = Field(0.5, description="Clock offset that is a WARNING.")
    memory_available_warning: float = Field(0.05, ge=0, le=1, description="Available share "
                                            "of RAM below which it is a WARNING.")

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdsConfig:
        for what in ("disk_used", "inodes_used", "gpu_temperature", "retired_pages"):
            warn, crit = getattr(self, f"{what}_warning"), getattr(self, f"{what}_critical")
            if warn > crit:
                raise ValueError(f"{what}_warning ({warn}) is above {what}_critical ({crit})")
        return self


class HealthConfig(_Section):
    enabled: bool = Field(True, description="Run health checks in the agent.")
    interval: Duration = Field(30.0, gt=0, description="How often the passive checks run.")
    full_interval: Duration = Field(3600.0, gt=0, description="How often the full suite runs.")
    timeout: Duration = Field(10.0, gt=0, description="A check that takes longer is UNKNOWN.")
    failures_to_trip: int = Field(1, ge=1, description="Consecutive failed runs before a "
                                  "condition turns unhealthy.")
    passes_to_clear: int = Field(2, ge=1, description="Consecutive passing runs before it "
                                 "clears by itself.")
    families: list[str] = Field(
        default_factory=lambda: ["gpu", "xid", "disk", "memory", "kernel", "clock", "system",
                                 "services", "network", "smart", "diagnostics"],
        description="Check families to load, by registered name.",
    )
    expected_gpus: int = Field(0, ge=0, description="GPUs the node must have; 0 = no "
                               "expectation.")
    kernel_log: str = Field("/dev/kmsg", description="Where XID and OOM lines are read: "
                            "/dev/kmsg, journal, or the path of a file to follow.")
    xid_window: Duration = Field(86400.0, description="XIDs older than this no longer hold "
                                 "a GPU unhealthy.")
    dcgm_diag_level: int = Field(1, ge=1, le=2, description="`dcgmi diag -r` level of the "
                                 "level-2 diagnostics: 1 (quick) or 2 (about 2 minutes).")
    nvml_events: bool = Field(True, description="Also listen for XIDs through NVML events "
                              "(where the GPU and driver support them).")
    units: list[str] = Field(default_factory=list, description="systemd units that must be "
                             "active (e.g. containerd.service).")
    processes: list[str] = Field(default_factory=list, description="Process names that must "
                                 "be running (e.g. raylet).")
    endpoints: list[EndpointConfig] = Field(default_factory=list,
                                            description="TCP endpoints that must answer.")
    custom: list[CustomCheckConfig] = Field(default_factory=list,
                                            description="Custom checks (NPD/Nagios codes).")
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig,
                                         description="Limits of the built-in checks.")
    checks: dict[str, CheckOverride] = Field(default_factory=dict,
                                             description="Per-check overrides, by check name.")
