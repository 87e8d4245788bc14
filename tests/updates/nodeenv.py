"""A throwaway node for update tests: a Debian-like alternate root fed by real local apt
repositories, a state dir, a config file, and recording drain/reboot/restart commands."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from swarm_maint.config import Config, config_from_dict
from swarm_maint.store import Store
from swarm_maint.updates.packages.apt import AptManager
from swarm_maint.updates.service import UpdateService
from tests.updates.debrepo import Deb, make_root, publish

CLI = [sys.executable, "-m", "swarm_maint.cli.main"]

_REBOOT = ('mkdir -p "$DPKG_ROOT/run"\ntouch "$DPKG_ROOT/run/reboot-required"\n'
           'echo {name} >> "$DPKG_ROOT/run/reboot-required.pkgs"')

# the driver package's user-space half: the fake NVML library reports its version
_NVML = ('if [ -n "$FAKE_NVML_STATE" ]; then\n'
         '  sed -i "s/^driver_version=.*/driver_version={v}/" "$FAKE_NVML_STATE"\nfi')


def standard_debs() -> tuple[list[Deb], list[Deb]]:
    """(main, security) packages of the test repositories."""
    main = [
        Deb("tool", "1.0"), Deb("tool", "1.1"),
        Deb("libfoo", "1.0"),
        Deb("nvidia-driver-test", "1.0", postinst=_NVML.format(v="535.104.05")),
        Deb("nvidia-driver-test", "1.1", postinst=_NVML.format(v="550.54.15")),
        Deb("broken", "1.0"),
        Deb("broken", "1.1", postinst='echo "broken was here" >> "$DPKG_ROOT/etc/app.conf"\n'
            "exit 3"),
        Deb("test-microcode", "1.0"), Deb("test-microcode", "1.1"),
        Deb("rebooter", "1.0"), Deb("rebooter", "1.1", postinst=_REBOOT.format(name="rebooter")),
        Deb("raylet-svc", "1.0", unit="ray-head.service"),
        Deb("raylet-svc", "1.1", unit="ray-head.service"),
        Deb("sshish", "1.0", unit="sshish.service"),
        Deb("containerd-test", "1.0", unit="containerd.service"),
        Deb("secbroken", "1.0"),
        Deb("flaky", "1.0"),
        Deb("flaky", "1.1", postinst='if [ ! -e "$DPKG_ROOT/flaky-once" ]; then\n'
            '  touch "$DPKG_ROOT/flaky-once"; exit 1\nfi'),
    ]
    security = [Deb("libfoo", "1.0+sec1"), Deb("sshish", "1.0+sec1", unit="sshish.service"),
                Deb("containerd-test", "1.0+sec1", unit="containerd.service"),
                Deb("secbroken", "1.0+sec1", postinst="exit 4")]
    return main, security


@dataclass
class NodeEnv:
    tmp: Path
    root: Path
    state: Path
    config_path: Path
    settings: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.tmp / "commands.log"

    def commands(self) -> list[str]:
        if not self.log.exists():
            return []
        return [ln.strip() for ln in self.log.read_text().splitlines()]

    def config(self) -> Config:
        return config_from_dict(tomllib.loads(self.config_path.read_text()))

    def reconfigure(self, **updates: Any) -> None:
        self.settings["updates"].update(updates)
        self.config_path.write_text(tomli_w.dumps(self.settings))

    def apt(self) -> AptManager:
        return AptManager(self.root)

    def installed(self) -> dict[str, str]:
        return self.apt().installed()

    def service(self, **kw: Any) -> tuple[UpdateService, Store]:
        store = Store(self.state / "state.db")
        return UpdateService(self.config(), store, root=self.root,
                             config_file=self.config_path, **kw), store

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args, "--config", str(self.config_path)],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env}, stdin=subprocess.DEVNULL)


def recorder(tmp: Path, name: str, body: str = "") -> list[str]:
    """A command that appends its name and arguments to commands.log, then runs ``body``."""
    script = tmp / f"{name}.sh"
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp}/commands.log"\n{body}\n')
    script.chmod(0o755)
    return [str(script)]


def make_node(tmp: Path, repos: tuple[str, str], *, install: dict[str, str],
              updates: dict[str, Any] | None = None,
              extra: dict[str, Any] | None = None) -> NodeEnv:
    root = make_root(tmp / "root", list(repos))
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/app.conf").write_text("setting = 1\n")
    (root / "run").mkdir(exist_ok=True)
    boot = tmp / "boot_id"
    boot.write_text("boot-1\n")
    apt = AptManager(root)
    apt.refresh()
    apt.install(install)
    state = tmp / "state"
    settings: dict[str, Any] = {
        "agent": {"state_dir": str(state)},
        "backup": {"config_snapshots": {"paths": ["/etc"]}},
        "monitoring": {"collectors": ["cpu"]},
        "health": {"families": ["disk"], "custom": [
            {"name": "app-conf", "timeout": "10s", "command": [
                "sh", "-c", f"grep -q broken {root}/etc/app.conf && exit 2; exit 0"]}]},
        "updates": {
            "root": str(root),
            "root_is_live": True,  # the test root stands for this node
            "security_origins": ["l=Swarm Test-Security"],
            "min_age": "0s",
            "drainer": "command",
            "drain_command": recorder(tmp, "drain"),
            "undrain_command": recorder(tmp, "undrain"),
            "reboot_command": recorder(tmp, "reboot"),
            "restart_command": recorder(tmp, "restart"),
            "driver_reload_command": recorder(tmp, "reload"),
            "boot_id_file": str(boot),
            "gate_settle": "0s",
            **(updates or {}),
        },
        **(extra or {}),
    }
    cfg_path = tmp / "swarm-maint.toml"
    cfg_path.write_text(tomli_w.dumps(settings))
    return NodeEnv(tmp, root, state, cfg_path, settings)


def publish_standard(base: Path) -> tuple[str, str]:
    main, security = standard_debs()
    return (publish(base / "main", main, origin="Swarm Test", label="Swarm Test",
                    suite="stable", codename="test"),
            publish(base / "security", security, origin="Swarm Test",
                    label="Swarm Test-Security", suite="stable-security",
                    codename="test-security"))
