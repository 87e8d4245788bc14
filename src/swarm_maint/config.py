"""The TOML configuration: pydantic models, embedded defaults, one-line errors.

Every key has a type, a default and a one-line description (``Field(description=...)``);
docs/configuration.md is generated from these models and a test keeps it in step.
Unknown keys are rejected so a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from .durations import format_duration, parse_duration
from .errors import ConfigError

__all__ = [
    "AgentConfig",
    "BackupConfig",
    "Config",
    "ConfigSnapshotsConfig",
    "DiskConfig",
    "Duration",
    "FilesystemConfig",
    "HealthConfig",
    "HistoryConfig",
    "MonitoringConfig",
    "NetworkConfig",
    "PipEnvConfig",
    "UpdatesConfig",
    "default_state_dir",
    "iter_keys",
    "load_config",
    "parse_listen",
]


def _to_seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration string such as '30s'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("durations cannot be negative")
        return float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("expected a duration string such as '30s'")


Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    PlainSerializer(format_duration, return_type=str),
]
"""Seconds in Python, a string like ``"5m"`` in TOML."""

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


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/swarm-maint, else ~/.local/state/swarm-maint."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "swarm-maint"


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into its parts."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", value.strip())
    if not m:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:9310 or [::1]:9310)")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")
    return host, port


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


class AgentConfig(_Section):
    listen: str = Field(
        "127.0.0.1:9310",
        description="HOST:PORT the HTTP server binds to; loopback by default.",
    )
    state_dir: str = Field(
        "",
        description="Directory for the state database and API token; "
        "empty means $XDG_STATE_HOME/swarm-maint.",
    )
    node_name: str = Field("", description="Name of this node in metrics and alerts; "
                           "empty means the host name.")
    token_file: str = Field(
        "",
        description="File holding the bearer token for mutating API calls; "
        "empty means <state_dir>/api-token (created with mode 0600).",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning or error.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return v

    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir).expanduser() if self.state_dir else default_state_dir()

    def resolved_node_name(self) -> str:
        return self.node_name or socket.gethostname()


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


class HealthConfig(_Section):
    enabled: bool = Field(True, description="Run health checks in the agent.")
    interval: Duration = Field(30.0, description="How often the passive checks run.")
    full_interval: Duration = Field(3600.0, description="How often the full suite runs.")
    timeout: Duration = Field(10.0, description="A check that takes longer is UNKNOWN.")
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


_BUILTIN_RECEIVERS = ("webhook", "alertmanager", "slack", "email")


class ReceiverConfig(_Section):
    name: str = Field(..., description="Name of the receiver, used by routes and the outbox.")
    type: str = Field("webhook", description="webhook (Alertmanager's webhook format), "
                      "alertmanager (API v2 push), slack (incoming webhook), email (SMTP), "
                      "or a plugin registered in the swarm_maint.notifiers entry-point group.")
    url: str = Field("", description="webhook and slack: where notifications are POSTed; "
                     "alertmanager: its base URL, e.g. http://127.0.0.1:9093.")
    timeout: Duration = Field(5.0, description="Timeout of one delivery attempt.")
    send_resolved: bool = Field(True, description="Also notify when an alert resolves.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers "
                                    "(webhook, alertmanager, slack), e.g. Authorization.")
    resend_interval: Duration = Field(60.0, description="alertmanager: re-send firing "
                                      "alerts this often; each push is valid for 4 times it.")
    channel: str = Field("", description="slack: channel override (empty: the hook's own).")
    smtp_host: str = Field("", description="email: SMTP server host.")
    smtp_port: int = Field(587, ge=1, le=65535, description="email: SMTP server port.")
    security: str = Field("starttls", description="email: starttls, tls (implicit, port "
                          "465) or none.")
    username: str = Field("", description="email: SMTP AUTH user (empty: no AUTH).")
    password_file: str = Field("", description="email: file holding the SMTP password.")
    ca_file: str = Field("", description="email: CA bundle to verify the server's "
                         "certificate (empty: the system's).")
    from_address: str = Field("", description="email: the From address.")
    to: list[str] = Field(default_factory=list, description="email: recipient addresses.")
    options: dict[str, Any] = Field(default_factory=dict, description="Settings of a "
                                    "plugin receiver type, passed to it as they are.")

    @model_validator(mode="after")
    def _per_type(self) -> ReceiverConfig:
        t = self.type
        if t in ("webhook", "alertmanager", "slack"):
            if not re.match(r"https?://[^/\s]+", self.url):
                raise ValueError(f"receiver {self.name!r} ({t}) needs url = \"http(s)://...\"")
        elif t == "email":
            if not self.smtp_host:
                raise ValueError(f"receiver {self.name!r} (email) needs smtp_host")
            if "@" not in self.from_address or not self.to or any("@" not in a
                                                                   for a in self.to):
                raise ValueError(f"receiver {self.name!r} (email) needs from_address and to "
                                 "(a list of addresses)")
            if self.security not in ("starttls", "tls", "none"):
                raise ValueError(f"receiver {self.name!r}: security must be starttls, tls "
                                 "or none")
            if self.username and not self.password_file:
                raise ValueError(f"receiver {self.name!r}: username needs password_file")
        else:
            from .plugins import available

            plugins = available("swarm_maint.notifiers")
            if t not in plugins:
                raise ValueError(f"receiver {self.name!r}: unknown type {t!r} (known: "
                                 f"{', '.join(plugins)})")
        return self


def _check_matchers(v: list[str]) -> list[str]:
    from .alerts.matchers import parse_matcher

    for text in v:
        parse_matcher(text)
    return v


class RouteConfig(_Section):
    matchers: list[str] = Field(default_factory=list, description="Label matchers "
                                "(name=value, !=, =~, !~) an alert must all satisfy; empty "
                                "matches every alert.")
    receivers: list[str] = Field(..., min_length=1, description="Receivers of the alerts "
                                 "this route matches.")
    group_by: list[str] = Field(default_factory=lambda: ["alertname"], description="Alerts "
                                "with equal values of these labels are sent together.")
    group_wait: Duration = Field(0.0, description="How long a new group waits for more "
                                 "alerts before its first notification.")
    repeat_interval: Duration = Field(4 * 3600.0, description="Notify again about an alert "
                                      "that is still firing this often.")
    continue_matching: bool = Field(False, description="Also try the following routes "
                                    "after this one matched.")

    _matchers = field_validator("matchers")(_check_matchers)


class AlertsConfig(_Section):
    enabled: bool = Field(True, description="Evaluate alert rules in the agent.")
    default_rules: bool = Field(True, description="Load the shipped default rules.")
    rule_files: list[str] = Field(default_factory=list, description="Prometheus rule files "
                                  "added to the defaults.")
    receivers: list[ReceiverConfig] = Field(default_factory=list, description="Where "
                                            "notifications go (docs/alerts.md).")
    routes: list[RouteConfig] = Field(default_factory=list, description="Which alerts go "
                                      "to which receivers, tried in order (docs/alerts.md).")
    default_receivers: list[str] = Field(default_factory=list, description="Receivers of "
                                         "alerts no route matches; empty means all.")
    group_by: list[str] = Field(default_factory=lambda: ["alertname"], description="Grouping "
                                "of alerts no route matches.")
    repeat_interval: Duration = Field(4 * 3600.0, description="Repeat interval of alerts no "
                                      "route matches.")
    max_per_second: float = Field(5.0, gt=0, description="Most notifications per second to "
                                  "one receiver (a returning receiver gets no storm).")
    maintenance_expected: list[str] = Field(
        default_factory=lambda: [
            'alertname=~"GpuLost|GpuCountBelowExpected|HealthCheckCritical|'
            'GpuXidNeedsResetOrReboot|GpuRowRemapPending"'
        ],
        description="Matchers of the alerts a maintenance window holds back when it names "
        "none itself (a reboot or driver update makes these fire).")
    maintenance_grace: Duration = Field(120.0, description="Held alerts are released when "
                                        "they still fire this long after the maintenance.")

    _maintenance = field_validator("maintenance_expected")(_check_matchers)

    @model_validator(mode="after")
    def _references(self) -> AlertsConfig:
        names = [r.name for r in self.receivers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"receiver name used twice: {', '.join(dup)}")
        for i, route in enumerate(self.routes):
            for r in route.receivers:
                if r not in names:
                    raise ValueError(f"routes[{i}] names receiver {r!r}, which is not "
                                     "configured")
        for r in self.default_receivers:
            if r not in names:
                raise ValueError(f"default_receivers names {r!r}, which is not configured")
        return self


class ConfigSnapshotsConfig(_Section):
    repo: str = Field(
        "",
        description="Repository of configuration snapshots; empty means "
        "<state_dir>/config-snapshots.",
    )
    password_file: str = Field(
        "",
        description="Password file of that repository; empty means "
        "<state_dir>/config-snapshots.pass, created with a random password (mode 0600).",
    )
    paths: list[str] = Field(
        default_factory=lambda: [
            "/etc", "~/.kube", "~/ray_bootstrap_config.yaml", "/var/lib/kubelet/config.yaml",
        ],
        description="System and workload configuration to snapshot; paths that do not "
        "exist are skipped. The agent's own config file is always added.",
    )


class BackupConfig(_Section):
    config_snapshots: ConfigSnapshotsConfig = Field(
        default_factory=ConfigSnapshotsConfig, description="Configuration snapshots."
    )


_DRIVER_PACKAGES = [
    "nvidia-*", "libnvidia-*", "cuda", "cuda-*", "libcuda*", "libcudnn*", "libnccl*",
    "xserver-xorg-video-nvidia*", "firmware-nvidia-*", "datacenter-gpu-manager*",
]
_KERNEL_PACKAGES = ["linux-image-*", "linux-headers-*", "linux-modules-*", "linux-generic*",
                    "linux-image", "linux-headers"]


class PipEnvConfig(_Section):
    name: str = Field(..., min_length=1, description="Name of the environment in plans "
                      "and history, e.g. 'ray'.")
    python: str = Field(..., min_length=1, description="Its Python executable or "
                        "virtualenv directory.")
    index_url: str = Field("", description="Package index (empty: pip's own setting).")
    find_links: list[str] = Field(default_factory=list, description="Local directories or "
                                  "pages of wheels; with no index_url only these are read.")
    holds: list[str] = Field(
        default_factory=lambda: ["torch", "torchvision", "torchaudio", "triton", "nvidia-*",
                                 "ray", "jax", "jaxlib", "tensorflow*", "pip", "setuptools"],
        description="Packages (globs) routine updates never touch in this environment: "
        "the ones built against the driver or pinned by the workload.")


class UpdatesConfig(_Section):
    enabled: bool = Field(True, description="Let the agent look for security updates "
                          "and export pending updates as metrics.")
    apt: bool = Field(True, description="Manage apt/dpkg packages (when apt-get exists).")
    root: str = Field("", description="Alternate root for apt and dpkg (a chroot or an "
                      "image); empty: this system.")
    root_is_live: bool = Field(False, description="With an alternate root: it is this "
                               "node's running system, so drain, reboot, driver reload, "
                               "restarts and the health gate act here. Off (an image or a "
                               "chroot): those steps are skipped.")
    pip: list[PipEnvConfig] = Field(default_factory=list, description="Python "
                                    "environments of the workloads to keep updated.")
    security_origins: list[str] = Field(
        default_factory=lambda: [
            "o=Debian,l=Debian-Security", "o=Debian,n=*-security",
            "o=Ubuntu,a=*-security", "o=UbuntuESM*,a=*-security",
        ],
        description="Release fields (o origin, a suite, n codename, l label, c component, "
        "site; globs) that make an update a security update, in the style of "
        "unattended-upgrades' Origins-Pattern.")
    holds: list[str] = Field(
        default_factory=lambda: [*_DRIVER_PACKAGES, *_KERNEL_PACKAGES],
        description="apt packages (globs) that routine updates never touch; they move "
        "together in a driver update (`update apply --driver`).")
    driver_packages: list[str] = Field(
        default_factory=lambda: list(_DRIVER_PACKAGES),
        description="Packages whose update needs the GPU driver reloaded.")
    reboot_packages: list[str] = Field(
        default_factory=lambda: [*_KERNEL_PACKAGES, "*-microcode", "libc6", "dbus",
                                 "systemd"],
        description="Packages whose update needs a reboot.")
    critical_services: list[str] = Field(
        default_factory=lambda: ["docker*", "containerd*", "kubelet*", "ray*", "nvidia-*",
                                 "slurm*", "swarm-*"],
        description="systemd units (globs) whose restart interrupts workloads, so a package "
        "shipping one is disruptive.")
    min_age: Duration = Field(172800.0, description="A candidate version is installed only "
                              "after it has been seen this long.")
    security_min_age: Duration = Field(0.0, description="The same for security updates "
                                       "(0: as soon as they appear).")
    security_check_interval: Duration = Field(3600.0, description="How often the agent "
                                              "looks for security updates.")
    auto_apply_security: bool = Field(True, description="The agent applies pending "
                                      "non-disruptive security updates at once; disruptive "
                                      "ones wait for a maintenance window.")
    drainer: str = Field("none", description="How the node is taken out of service before "
                         "a disruptive update: none or command.")
    drain_command: list[str] = Field(default_factory=list, description="drainer = command: "
                                     "takes the node out of service (exit 0 when done).")
    undrain_command: list[str] = Field(default_factory=list, description="drainer = command: "
                                       "puts it back.")
    reboot: str = Field("auto", description="auto: reboot when an update needs it and resume "
                        "after boot; never: leave the reboot to a person.")
    reboot_command: list[str] = Field(default_factory=lambda: ["systemctl", "reboot"],
                                      description="Command that reboots the node.")
    boot_id_file: str = Field("/proc/sys/kernel/random/boot_id", description="Changes at "
                              "every boot; tells a finished reboot.")
    driver_reload_command: list[str] = Field(
        default_factory=lambda: ["sh", "-c", "modprobe -r nvidia_uvm nvidia_drm "
                                 "nvidia_modeset nvidia && modprobe nvidia && "
                                 "modprobe nvidia_uvm"],
        description="Reloads the GPU driver after a driver update without a reboot.")
    restart_command: list[str] = Field(default_factory=lambda: ["systemctl", "try-restart"],
                                       description="Restarts units of updated packages "
                                       "(their names are appended).")
    gate_fail_on: str = Field("CRITICAL", description="Health status that fails the gate "
                              "after an update: CRITICAL or WARNING.")
    gate_settle: Duration = Field(5.0, description="Wait this long after applying before "
                                  "the health gate runs.")
    max_duration: Duration = Field(7200.0, description="Longest maintenance window an "
                                   "update holds alerts for.")

    @field_validator("drainer")
    @classmethod
    def _drainer(cls, v: str) -> str:
        if v not in ("none", "command"):
            raise ValueError("must be none or command")
        return v

    @field_validator("reboot")
    @classmethod
    def _reboot(cls, v: str) -> str:
        if v not in ("auto", "never"):
            raise ValueError("must be auto or never")
        return v

    @field_validator("gate_fail_on")
    @classmethod
    def _gate(cls, v: str) -> str:
        if v not in ("CRITICAL", "WARNING"):
            raise ValueError("must be CRITICAL or WARNING")
        return v

    @field_validator("security_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for pat in v:
            for part in pat.split(","):
                key, eq, _ = part.partition("=")
                if not eq or key.strip() not in _ORIGIN_KEYS:
                    raise ValueError(f"{pat!r}: expected key=value pairs with keys "
                                     f"{', '.join(sorted(_ORIGIN_KEYS))}")
        return v

    @model_validator(mode="after")
    def _drain_command(self) -> UpdatesConfig:
        if self.drainer == "command" and not self.drain_command:
            raise ValueError("drainer = command needs drain_command")
        names = [e.name for e in self.pip]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup or "apt" in names:
            raise ValueError(f"pip environment names must be unique and not 'apt': "
                             f"{', '.join(dup or ['apt'])}")
        return self


_ORIGIN_KEYS = {"o", "a", "n", "l", "c", "site", "origin", "suite", "archive", "codename",
                "label", "component"}


class Config(_Section):
    agent: AgentConfig = Field(default_factory=AgentConfig, description="The node agent.")
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig,
                                         description="Metric collection and history.")
    backup: BackupConfig = Field(default_factory=BackupConfig,
                                 description="Backups and configuration snapshots.")
    health: HealthConfig = Field(default_factory=HealthConfig,
                                 description="Hardware and software health checks.")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig,
                                 description="Alert rules and notifications.")
    updates: UpdatesConfig = Field(default_factory=UpdatesConfig,
                                   description="System and Python package updates.")


def _key_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")


def _format_validation(source: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = _key_path(err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (see docs/configuration.md for the valid keys)"
        msg = msg.removeprefix("Value error, ")
        problems.append(f"{source}: key {key}: {msg}")
    return problems[0] + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1
                          else "")


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(source, exc)) from None


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load and validate a TOML file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: TOML syntax error: {exc}") from None
    return config_from_dict(data, str(p))


def iter_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every leaf key as (dotted name, TOML default, description), for the docs."""
    import tomli_w

    rows: list[tuple[str, str, str]] = []
    defaults = model().model_dump(mode="json")
    for name, field in model.model_fields.items():
        ann = field.annotation
        dotted = f"{prefix}{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(iter_keys(ann, dotted + "."))
            continue
        value = defaults[name]
        if isinstance(value, list):
            rendered = json.dumps(value)  # a JSON array of strings is valid TOML, on one line
        else:
            rendered = tomli_w.dumps({"v": value}).strip().removeprefix("v = ")
        rows.append((dotted, rendered, field.description or ""))
    return rows
