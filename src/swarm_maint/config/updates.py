"""``[updates]``: system (apt) and Python (pip) package updates and how they are applied."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from .base import Duration, _Section

__all__ = ["PipEnvConfig", "UpdatesConfig"]


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
