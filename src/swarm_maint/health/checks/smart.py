"""Drive health through smartmontools: ``smartctl --scan-open`` then ``-H -A`` per drive.

smartctl's exit status is a bit mask (1 bad arguments, 2 open failed, 4 a SMART command
failed, 8 the drive reports failing, 16-128 attribute and log findings), so its JSON
output is read whatever the status. Runs at ``full_interval``: SMART reads are cheap for
the drive but slow to issue on some controllers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

from ..check import CheckResult, HealthCheck, HealthContext, Status, worst

__all__ = ["SmartCheck", "create", "judge_device", "run_smart"]

# ATA attributes whose raw count above zero means the media is wearing out.
_ATA_COUNTS = {5: "reallocated sectors", 197: "pending sectors", 198: "offline uncorrectable "
               "sectors"}
_CALL_TIMEOUT = 20.0


def _smartctl_json(smartctl: str, args: list[str], timeout: float) -> dict[str, Any]:
    """smartctl's JSON document; raises OSError/TimeoutExpired/ValueError."""
    proc = subprocess.run([smartctl, *args], capture_output=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)
    data = json.loads(proc.stdout.decode(errors="replace") or "null")
    if not isinstance(data, dict):
        raise ValueError(f"smartctl printed no JSON object (exit {proc.returncode})")
    return data


def _messages(data: dict[str, Any]) -> str:
    msgs = data.get("smartctl", {}).get("messages") or []
    return "; ".join(str(m.get("string", "")) for m in msgs if isinstance(m, dict))


def judge_device(data: dict[str, Any]) -> tuple[Status, str, str | None, dict[str, Any]]:
    """(status, finding, action, details) for one ``smartctl --json -H -A`` document."""
    dev = data.get("device", {}) or {}
    name = str(dev.get("name", "?"))
    model = str(data.get("model_name", "") or "")
    label = f"{name} ({model})" if model else name
    exit_status = int(data.get("smartctl", {}).get("exit_status", 0) or 0)
    details: dict[str, Any] = {"model": model, "serial": data.get("serial_number"),
                               "protocol": dev.get("protocol"), "exit_status": exit_status}
    health = data.get("smart_status")
    if exit_status & 2 or not isinstance(health, dict):
        why = _messages(data) or "no SMART status returned"
        details["error"] = why
        return "UNKNOWN", f"{label}: cannot read SMART data: {why}", None, details
    details["passed"] = bool(health.get("passed"))
    findings: list[tuple[Status, str, str | None]] = []
    if health.get("passed") is False:
        findings.append(("CRITICAL", f"{label} SMART overall health FAILED: back up its "
                         "data and replace the drive", "replace_hardware"))
    nvme = data.get("nvme_smart_health_information_log")
    if isinstance(nvme, dict):
        cw = int(nvme.get("critical_warning", 0) or 0)
        used = int(nvme.get("percentage_used", 0) or 0)
        media = int(nvme.get("media_errors", 0) or 0)
        details.update(critical_warning=cw, percentage_used=used, media_errors=media)
        if cw:
            findings.append(("CRITICAL", f"{label} NVMe critical warning 0x{cw:02x} (spare, "
                             "temperature, reliability or read-only): replace the drive",
                             "replace_hardware"))
        if used >= 100:
            findings.append(("CRITICAL", f"{label} wear {used}% of its rated endurance: "
                             "replace the drive", "replace_hardware"))
        elif used >= 90:
            findings.append(("WARNING", f"{label} wear {used}% of its rated endurance: plan a "
                             "replacement", "replace_hardware"))
        if media:
            findings.append(("WARNING", f"{label} {media} media error(s): plan a replacement",
                             "replace_hardware"))
    table = (data.get("ata_smart_attributes") or {}).get("table") or []
    for attr in table:
        if not isinstance(attr, dict):
            continue
        aid = attr.get("id")
        when_failed = str(attr.get("when_failed", "") or "")
        if when_failed == "now":
            findings.append(("CRITICAL", f"{label} attribute {attr.get('name')} below its "
                             "failure threshold: replace the drive", "replace_hardware"))
        if aid in _ATA_COUNTS:
            raw = int((attr.get("raw") or {}).get("value", 0) or 0)
            details[str(attr.get("name", aid))] = raw
            if raw > 0:
                findings.append(("WARNING", f"{label} {raw} {_ATA_COUNTS[aid]}: the media is "
                                 "degrading; plan a replacement", "investigate"))
    status, msg, action = worst(findings)
    return status, (msg or f"{label} healthy"), action, details


def run_smart(smartctl: str, timeout: float = 60.0) -> CheckResult:
    """Scan for drives and judge each (the ``smart`` check's body)."""
    deadline = time.monotonic() + timeout
    try:
        scan = _smartctl_json(smartctl, ["--scan-open", "--json"], min(_CALL_TIMEOUT, timeout))
    except subprocess.TimeoutExpired:
        return CheckResult("smart", "UNKNOWN", "smartctl --scan-open did not answer in time")
    except (OSError, ValueError) as exc:
        return CheckResult("smart", "UNKNOWN", f"smartctl --scan-open failed: {exc}")
    devices = [d for d in scan.get("devices") or [] if isinstance(d, dict) and d.get("name")]
    if not devices:
        return CheckResult("smart", "OK", "no SMART-capable drives found (a VM, or drives "
                           "behind a RAID controller smartctl cannot see)", None,
                           {"devices": {}})
    findings: list[tuple[Status, str, str | None]] = []
    details: dict[str, Any] = {}
    for dev in devices:
        name = str(dev["name"])
        if dev.get("open_error"):
            err = str(dev["open_error"])
            details[name] = {"error": err}
            findings.append(("UNKNOWN", err if err.startswith(name) else f"{name}: {err}",
                             None))
            continue
        left = deadline - time.monotonic()
        if left <= 1:
            details[name] = {"error": "not read: out of time"}
            findings.append(("UNKNOWN", f"{name}: not read, out of time", None))
            continue
        args = ["--json", "-H", "-A"]
        if dev.get("type"):
            args += ["-d", str(dev["type"])]
        try:
            data = _smartctl_json(smartctl, [*args, name], min(_CALL_TIMEOUT, left))
        except subprocess.TimeoutExpired:
            details[name] = {"error": "timed out"}
            findings.append(("UNKNOWN", f"{name}: smartctl did not answer in time", None))
            continue
        except (OSError, ValueError) as exc:
            details[name] = {"error": str(exc)}
            findings.append(("UNKNOWN", f"{name}: {exc}", None))
            continue
        data.setdefault("device", {}).setdefault("name", name)
        status, msg, action, info = judge_device(data)
        details[name] = {"status": status, **info}
        findings.append((status, msg if status != "OK" else "", action))
    status, msg, action = worst(findings)
    if status == "OK":
        msg = f"{len(devices)} drive(s) healthy"
    return CheckResult("smart", status, msg, action, {"devices": details})


class SmartCheck:
    name = "smart"
    level = 1

    def __init__(self, ctx: HealthContext, smartctl: str | None) -> None:
        self._smartctl = smartctl
        self.interval = ctx.config.full_interval
        self.timeout = max(ctx.config.timeout, 60.0)

    def run(self) -> CheckResult:
        if self._smartctl is None:
            return CheckResult(self.name, "UNKNOWN",
                               "smartctl not found on PATH: install smartmontools, or remove "
                               "'smart' from health.families")
        return run_smart(self._smartctl, self.timeout - 2.0)


def create(ctx: HealthContext, smartctl: str | None = None) -> list[HealthCheck]:
    """The ``smart`` check when smartctl exists; when it does not, a check that says so
    only if the configuration listed the families explicitly (asked for it)."""
    path = smartctl or shutil.which("smartctl")
    if path is None:
        explicit = "families" in ctx.config.model_fields_set and "smart" in ctx.config.families
        return [SmartCheck(ctx, None)] if explicit else []
    return [SmartCheck(ctx, path)]
