"""Host memory checks: available RAM (from the frame), EDAC error counters (sysfs) and
RAM the kernel took out of service after hardware errors (HardwareCorrupted)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..check import CheckResult, HealthCheck, HealthContext
from .disk import format_bytes

__all__ = ["EdacCheck", "HardwareCorruptedCheck", "MemoryAvailableCheck", "create",
           "read_edac"]


class _Base:
    name = ""
    level = 1

    def __init__(self, ctx: HealthContext) -> None:
        self._ctx = ctx
        self.interval = ctx.config.interval
        self.timeout = ctx.config.timeout


class MemoryAvailableCheck(_Base):
    name = "memory_available"

    def run(self) -> CheckResult:
        frame = self._ctx.frame()
        total = frame.one("swarm_memory_total_bytes")
        avail = frame.one("swarm_memory_available_bytes")
        if total is None or avail is None or total <= 0:
            return CheckResult(self.name, "UNKNOWN",
                               "no memory metrics in the latest collection "
                               "(is the memory collector enabled?)")
        share = avail / total
        limit = self._ctx.config.thresholds.memory_available_warning
        details = {"available_bytes": avail, "total_bytes": total,
                   "available_ratio": round(share, 4)}
        if share < limit:
            return CheckResult(
                self.name, "WARNING",
                f"only {format_bytes(avail)} of {format_bytes(total)} RAM available "
                f"({share:.1%} < {limit:.0%}): the OOM killer is near; find the process "
                "using it (ps aux --sort=-rss) and restart or resize the workload",
                "investigate", details)
        return CheckResult(self.name, "OK", f"{format_bytes(avail)} of {format_bytes(total)} "
                           f"RAM available ({share:.0%})", None, details)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _natural(p: Path) -> tuple[int, str]:
    m = re.search(r"(\d+)$", p.name)
    return (int(m.group(1)) if m else -1, p.name)


def read_edac(sys_root: Path) -> dict[str, dict[str, Any]] | None:
    """{controller: {ce_count, ue_count, dimms: {dimm: {label, ce_count, ue_count}}}}, or
    None when the kernel has no EDAC driver loaded (no mc directory)."""
    mc_dir = sys_root / "devices" / "system" / "edac" / "mc"
    try:
        controllers = sorted((p for p in mc_dir.iterdir() if re.fullmatch(r"mc\d+", p.name)),
                             key=_natural)
    except OSError:
        return None
    out: dict[str, dict[str, Any]] = {}
    for mc in controllers:
        dimms: dict[str, dict[str, Any]] = {}
        try:
            children = sorted((p for p in mc.iterdir()
                               if re.fullmatch(r"(dimm|rank)\d+", p.name)), key=_natural)
        except OSError:
            children = []
        for d in children:
            try:
                label = (d / "dimm_label").read_text().strip()
            except OSError:
                label = ""
            dimms[d.name] = {"label": label or d.name,
                             "ce_count": _read_int(d / "dimm_ce_count"),
                             "ue_count": _read_int(d / "dimm_ue_count")}
        out[mc.name] = {"ce_count": _read_int(mc / "ce_count"),
                        "ue_count": _read_int(mc / "ue_count"), "dimms": dimms}
    return out


class EdacCheck(_Base):
    """Uncorrectable memory errors are CRITICAL; correctable ones growing since the
    previous run are a WARNING (a DIMM starting to fail). The first run takes the
    correctable counts as a baseline."""

    name = "memory_edac"

    def __init__(self, ctx: HealthContext) -> None:
        super().__init__(ctx)
        self._prev_ce: dict[str, int] | None = None

    def run(self) -> CheckResult:
        edac = read_edac(self._ctx.sys_root)
        if edac is None or not edac:
            return CheckResult(self.name, "OK",
                               "EDAC not available (no memory controller driver loaded), "
                               "memory errors cannot be counted", None,
                               {"edac_available": False})
        ue_items: list[str] = []
        ce_now: dict[str, int] = {}
        ue_total = ce_total = 0
        for mc, info in edac.items():
            ue, ce = info["ue_count"] or 0, info["ce_count"] or 0
            ue_total += ue
            ce_total += ce
            ce_now[mc] = ce
            if ue > 0:
                where = [f"{d['label']} ({d['ue_count']})" for d in info["dimms"].values()
                         if (d["ue_count"] or 0) > 0]
                ue_items.append(f"{mc}: {ue}" + (f" on {', '.join(where)}" if where else ""))
        prev, self._prev_ce = self._prev_ce, ce_now
        details: dict[str, Any] = {"edac_available": True, "controllers": edac,
                                   "ue_total": ue_total, "ce_total": ce_total}
        if ue_items:
            return CheckResult(
                self.name, "CRITICAL",
                f"uncorrectable memory errors: {'; '.join(ue_items)}: data may have been "
                "corrupted; drain the node and replace the DIMM", "replace_hardware", details)
        if prev is not None:
            grown = {mc: ce - prev.get(mc, ce) for mc, ce in ce_now.items()
                     if ce > prev.get(mc, ce)}
            if grown:
                where = []
                for mc in grown:
                    labels = [d["label"] for d in edac[mc]["dimms"].values()
                              if (d["ce_count"] or 0) > 0]
                    where.append(f"{mc} +{grown[mc]}"
                                 + (f" ({', '.join(labels)})" if labels else ""))
                details["ce_increase"] = grown
                return CheckResult(
                    self.name, "WARNING",
                    f"correctable memory errors increasing: {', '.join(where)}: a DIMM may "
                    "be failing; check the BMC event log and plan a replacement",
                    "investigate", details)
        return CheckResult(self.name, "OK",
                           f"no uncorrectable memory errors ({ce_total} corrected since boot)",
                           None, details)


class HardwareCorruptedCheck(_Base):
    name = "memory_hardware_corrupted"

    def run(self) -> CheckResult:
        frame = self._ctx.frame()
        value = frame.one("swarm_memory_hardware_corrupted_bytes")
        if value is None:
            if frame.one("swarm_memory_total_bytes") is None:
                return CheckResult(self.name, "UNKNOWN",
                                   "no memory metrics in the latest collection "
                                   "(is the memory collector enabled?)")
            return CheckResult(self.name, "OK", "HardwareCorrupted not reported by this kernel",
                               None, {"reported": False})
        details = {"hardware_corrupted_bytes": value, "reported": True}
        if value > 0:
            return CheckResult(
                self.name, "WARNING",
                f"{format_bytes(value)} of RAM taken out of service after hardware memory "
                "errors (HardwareCorrupted): check the EDAC counters and the BMC event log, "
                "plan a DIMM replacement", "investigate", details)
        return CheckResult(self.name, "OK", "no RAM taken out of service", None, details)


def create(ctx: HealthContext) -> list[HealthCheck]:
    return [MemoryAvailableCheck(ctx), EdacCheck(ctx), HardwareCorruptedCheck(ctx)]
