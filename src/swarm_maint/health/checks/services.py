"""Service checks: configured systemd units must be active, configured processes must run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..check import CheckResult, HealthCheck, HealthContext, Status, worst

__all__ = ["ProcessesCheck", "SystemdUnitsCheck", "create", "running_processes"]

_NO_SYSTEMD = ("not been booted with systemd", "Failed to connect to bus",
               "System has not been booted")


class SystemdUnitsCheck:
    """``systemctl is-active`` for every unit in one call (one state line per unit)."""

    name = "systemd_units"
    level = 1

    def __init__(self, ctx: HealthContext, systemctl: str | None = None) -> None:
        self._units = list(ctx.config.units)
        self._systemctl = systemctl
        self.interval = ctx.config.interval
        self.timeout = ctx.config.timeout

    def run(self) -> CheckResult:
        exe = self._systemctl or shutil.which("systemctl")
        if exe is None or not os.access(exe, os.X_OK):
            return CheckResult(self.name, "UNKNOWN",
                               "systemctl not available: cannot check the units "
                               f"{', '.join(self._units)}", None, {"units": self._units})
        try:
            proc = subprocess.run([exe, "is-active", "--", *self._units],
                                  capture_output=True, text=True, errors="replace",
                                  timeout=max(1.0, self.timeout * 0.8), check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return CheckResult(self.name, "UNKNOWN",
                               "systemctl is-active did not answer in time (systemd busy?)")
        except OSError as exc:
            return CheckResult(self.name, "UNKNOWN", f"cannot run {exe}: {exc}")
        states = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        if len(states) != len(self._units):
            err = proc.stderr.strip().splitlines()
            if any(marker in proc.stderr for marker in _NO_SYSTEMD):
                msg = "systemd is not running on this host (not PID 1)"
            else:
                msg = f"unexpected answer from systemctl is-active (exit {proc.returncode})"
            return CheckResult(self.name, "UNKNOWN",
                               f"{msg}: cannot check the units {', '.join(self._units)}",
                               None, {"units": self._units, "stderr": err[:5]})
        per_unit = dict(zip(self._units, states, strict=True))
        findings: list[tuple[Status, str, str | None]] = []
        for unit, state in per_unit.items():
            if state == "active":
                continue
            status: Status = ("WARNING" if state in {"activating", "reloading", "refreshing"}
                              else "CRITICAL")
            findings.append((status, f"{unit} is {state}", "investigate"))
        status, msg, action = worst(findings)
        details = {"units": per_unit}
        if status == "OK":
            return CheckResult(self.name, "OK", f"{len(per_unit)} unit(s) active", None,
                               details)
        return CheckResult(self.name, status,
                           f"{msg}: see `systemctl status` and `journalctl -u` for the "
                           "unit, then restart it", action, details)


def running_processes(proc_root: Path, names: list[str]) -> dict[str, list[int]]:
    """{name: [pids]} of processes whose comm is the name, or whose argv[0] has it as
    its basename (comm is cut at 15 characters)."""
    found: dict[str, list[int]] = {n: [] for n in names}
    wanted = set(names)
    try:
        entries = list(os.scandir(proc_root))
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        base = Path(entry.path)
        try:
            comm = (base / "comm").read_text(errors="replace").rstrip("\n")
        except OSError:
            continue  # exited meanwhile
        match = comm if comm in wanted else None
        if match is None:
            try:
                raw = (base / "cmdline").read_bytes()
            except OSError:
                continue
            argv0 = raw.split(b"\0", 1)[0].decode(errors="replace")
            name = os.path.basename(argv0)
            if name in wanted:
                match = name
        if match is not None:
            found[match].append(int(entry.name))
    for pids in found.values():
        pids.sort()
    return found


class ProcessesCheck:
    name = "processes"
    level = 1

    def __init__(self, ctx: HealthContext) -> None:
        self._names = list(ctx.config.processes)
        self._proc_root = ctx.proc_root
        self.interval = ctx.config.interval
        self.timeout = ctx.config.timeout

    def run(self) -> CheckResult:
        found = running_processes(self._proc_root, self._names)
        missing = [n for n in self._names if not found[n]]
        details = {"processes": {n: pids[:20] for n, pids in found.items()},
                   "missing": missing}
        if missing:
            return CheckResult(
                self.name, "CRITICAL",
                f"not running: {', '.join(missing)}: check why it exited (its service "
                "logs) and restart it", "investigate", details)
        return CheckResult(self.name, "OK", f"all {len(self._names)} process(es) running",
                           None, details)


def create(ctx: HealthContext) -> list[HealthCheck]:
    checks: list[HealthCheck] = []
    if ctx.config.units:
        checks.append(SystemdUnitsCheck(ctx))
    if ctx.config.processes:
        checks.append(ProcessesCheck(ctx))
    return checks
