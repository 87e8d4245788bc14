"""GPU checks: judge the latest metrics frame (``ctx.frame()``); no NVML call of their own.

``gpu_count``   GPUs NVML sees vs ``health.expected_gpus``.
``gpu_lost``    a GPU that answers "GPU is lost" (fell off the bus): reboot.
``gpu_memory``  ECC errors, row remapping and page retirement.
``gpu_thermal`` temperature and hardware/thermal slowdown reasons.
``gpu_pcie``    link width (and generation under load) below the maximum; replay rate.
``gpu_driver``  the loaded kernel module vs the NVML library (``<proc>/driver/nvidia/version``).

Every per-GPU finding names the GPU by index and PCI bus id; findings are combined with
``worst()``.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path

from ..check import CheckResult, FrameSamples, HealthCheck, HealthContext, Status, worst

__all__ = [
    "GpuCountCheck",
    "GpuDriverCheck",
    "GpuLostCheck",
    "GpuMemoryCheck",
    "GpuPcieCheck",
    "GpuThermalCheck",
    "create",
    "kernel_module_version",
]

Finding = tuple[Status, str, str | None]
Labels = dict[str, str]

REPLAY_RATE_MIN_SPAN = 300.0
"""The PCIe replay rate is taken over at least this many seconds (a single replay between
two runs 30 s apart is not "120 per hour")."""
REPLAY_RATE_HISTORY = 3600.0
"""Readings older than this are dropped from the replay-rate baseline."""

_MODULE_VERSION = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)*)")
_SLOWDOWN_REASONS = {
    "hw_thermal_slowdown": "hardware thermal slowdown active: check cooling",
    "sw_thermal_slowdown": "software thermal slowdown active: check cooling",
    "hw_slowdown": "hardware slowdown active (overheating or power brake): check cooling "
                   "and power",
    "hw_power_brake_slowdown": "power brake slowdown active: check the power supply",
}


def _gpu_key(labels: Labels) -> tuple[str, str]:
    return labels.get("gpu", ""), labels.get("pci_bus_id", "")


def _who(key: tuple[str, str]) -> str:
    gpu, pci = key
    return f"GPU {gpu} ({pci or 'unknown pci'})"


class _PerGpu:
    """The frame's per-GPU samples: value(name, gpu, **extra labels)."""

    def __init__(self, frame: FrameSamples) -> None:
        self.frame = frame
        self.gpus: list[tuple[str, str]] = []
        self._values: dict[tuple[str, tuple[str, str], frozenset[tuple[str, str]]],
                           float] = {}
        seen: set[tuple[str, str]] = set()
        for name in ("swarm_gpu_lost",):
            for labels, _v in frame.get(name):
                k = _gpu_key(labels)
                if k not in seen:
                    seen.add(k)
                    self.gpus.append(k)
        self.gpus.sort(key=lambda k: (int(k[0]) if k[0].isdigit() else 1 << 30, k[1]))

    def value(self, name: str, gpu: tuple[str, str], **extra: str) -> float | None:
        for labels, v in self.frame.get(name):
            if _gpu_key(labels) == gpu and all(labels.get(k) == x for k, x in extra.items()):
                return v
        return None

    def lost(self, gpu: tuple[str, str]) -> bool:
        return self.value("swarm_gpu_lost", gpu) == 1.0


def _nvml_message(frame: FrameSamples) -> str:
    st = frame.statuses.get("gpu")
    return st.message if st is not None and st.message else "no status from the gpu collector"


class _Base:
    name = ""
    level = 1

    def __init__(self, ctx: HealthContext) -> None:
        self.ctx = ctx
        self.interval = ctx.config.interval
        self.timeout = ctx.config.timeout

    def result(self, findings: list[Finding], ok_message: str,
               details: dict[str, object] | None = None) -> CheckResult:
        if not findings:
            return CheckResult(self.name, "OK", ok_message, None, details or {})
        status, message, action = worst(findings)
        if status == "OK":
            message = message or ok_message
            action = None
        return CheckResult(self.name, status, message, action, details or {})

    def gpus(self) -> tuple[FrameSamples, _PerGpu] | None:
        frame = self.ctx.frame()
        if frame.one("swarm_gpu_nvml_available") != 1.0:
            return None
        return frame, _PerGpu(frame)


class GpuCountCheck(_Base):
    name = "gpu_count"

    def run(self) -> CheckResult:
        expected = self.ctx.config.expected_gpus
        frame = self.ctx.frame()
        nvml = frame.one("swarm_gpu_nvml_available")
        details: dict[str, object] = {"expected": expected}
        if nvml != 1.0:
            if expected == 0:
                return CheckResult(self.name, "OK", "no GPU expected", None, details)
            why = (_nvml_message(frame) if nvml is not None
                   else "no GPU metrics in the latest frame (is the gpu collector enabled?)")
            action = "reboot" if "mismatch" in why.lower() else "investigate"
            return CheckResult(self.name, "CRITICAL", f"NVML not available: {why}", action,
                               details)
        count = int(frame.one("swarm_gpus") or 0)
        details["visible"] = count
        if expected == 0:
            return CheckResult(self.name, "OK", f"{count} GPU{'s' if count != 1 else ''} "
                               "(no expectation set)", None, details)
        if count < expected:
            return CheckResult(self.name, "CRITICAL",
                               f"only {count} of {expected} expected GPUs visible: a GPU is "
                               "missing; reboot, then service the node if it stays missing",
                               "reboot", details)
        if count > expected:
            return CheckResult(self.name, "WARNING",
                               f"{count} GPUs visible but {expected} expected: check "
                               "health.expected_gpus", "investigate", details)
        return CheckResult(self.name, "OK", f"{count} of {expected} GPUs visible", None,
                           details)


class GpuLostCheck(_Base):
    name = "gpu_lost"

    def run(self) -> CheckResult:
        got = self.gpus()
        if got is None:
            return CheckResult(self.name, "OK", "no GPU")
        _frame, per = got
        lost = [g for g in per.gpus if per.lost(g)]
        findings: list[Finding] = [
            ("CRITICAL", f"{_who(g)} is lost (fell off the bus): reboot the node", "reboot")
            for g in lost]
        return self.result(findings, f"{len(per.gpus)} GPUs present, none lost",
                           {"lost": [{"gpu": g[0], "pci_bus_id": g[1]} for g in lost]})


class GpuMemoryCheck(_Base):
    name = "gpu_memory"

    def run(self) -> CheckResult:
        got = self.gpus()
        if got is None:
            return CheckResult(self.name, "OK", "no GPU")
        _frame, per = got
        th = self.ctx.config.thresholds
        findings: list[Finding] = []
        details: dict[str, object] = {}
        for g in per.gpus:
            if per.lost(g):
                continue
            who = _who(g)
            v = per.value
            unc = v("swarm_gpu_ecc_errors_total", g, error_type="uncorrected",
                    counter="volatile")
            cor = v("swarm_gpu_ecc_errors_total", g, error_type="corrected",
                    counter="volatile")
            pending = v("swarm_gpu_remapped_rows_pending", g)
            failed = v("swarm_gpu_remapped_rows_failed", g)
            sbe = v("swarm_gpu_retired_pages", g, cause="single_bit_ecc")
            dbe = v("swarm_gpu_retired_pages", g, cause="double_bit_ecc")
            retired = None if sbe is None and dbe is None else (sbe or 0) + (dbe or 0)
            retired_pending = v("swarm_gpu_retired_pages_pending", g)
            details[g[0]] = {"pci_bus_id": g[1], "ecc_uncorrected_volatile": unc,
                             "ecc_corrected_volatile": cor, "remap_pending": pending,
                             "remap_failed": failed, "retired_pages": retired,
                             "retired_pending": retired_pending}
            if unc is not None and unc > 0:
                findings.append(("CRITICAL", f"{who}: {int(unc)} uncorrectable ECC error(s) "
                                 "since the driver loaded: drain and reset the GPU",
                                 "reset_gpu"))
            if failed == 1.0:
                findings.append(("CRITICAL", f"{who}: row remapping failed: the GPU needs "
                                 "service", "replace_hardware"))
            if pending == 1.0:
                findings.append(("WARNING", f"{who}: row remap pending: reset the GPU when "
                                 "idle", "reset_gpu"))
            if retired is not None and retired >= th.retired_pages_critical:
                findings.append(("CRITICAL", f"{who}: {int(retired)} retired pages (limit "
                                 f"{th.retired_pages_critical}): replace the GPU",
                                 "replace_hardware"))
            elif retired is not None and retired >= th.retired_pages_warning:
                findings.append(("WARNING", f"{who}: {int(retired)} retired pages (warning "
                                 f"at {th.retired_pages_warning})", "investigate"))
            if retired_pending == 1.0:
                findings.append(("WARNING", f"{who}: page retirement pending: reset the GPU "
                                 "when idle", "reset_gpu"))
            if cor is not None and cor >= th.ecc_corrected_warning:
                findings.append(("WARNING", f"{who}: {int(cor)} corrected ECC errors since "
                                 "the driver loaded", "investigate"))
        return self.result(findings, f"GPU memory healthy on {len(per.gpus)} GPU(s)",
                           details)


class GpuThermalCheck(_Base):
    name = "gpu_thermal"

    def run(self) -> CheckResult:
        got = self.gpus()
        if got is None:
            return CheckResult(self.name, "OK", "no GPU")
        _frame, per = got
        th = self.ctx.config.thresholds
        findings: list[Finding] = []
        details: dict[str, object] = {}
        for g in per.gpus:
            if per.lost(g):
                continue
            who = _who(g)
            temp = per.value("swarm_gpu_temperature_celsius", g)
            active = [r for r in _SLOWDOWN_REASONS
                      if per.value("swarm_gpu_clock_event_active", g, reason=r) == 1.0]
            details[g[0]] = {"pci_bus_id": g[1], "temperature": temp, "slowdown": active}
            if temp is not None and temp >= th.gpu_temperature_critical:
                findings.append(("CRITICAL", f"{who}: {temp:g} °C (critical at "
                                 f"{th.gpu_temperature_critical:g} °C): drain the node and "
                                 "check cooling", "drain_node"))
            elif temp is not None and temp >= th.gpu_temperature_warning:
                findings.append(("WARNING", f"{who}: {temp:g} °C (warning at "
                                 f"{th.gpu_temperature_warning:g} °C): check cooling",
                                 "investigate"))
            for reason in active:
                findings.append(("WARNING", f"{who}: {_SLOWDOWN_REASONS[reason]}",
                                 "investigate"))
        return self.result(findings, f"temperatures normal on {len(per.gpus)} GPU(s)", details)


class GpuPcieCheck(_Base):
    name = "gpu_pcie"

    def __init__(self, ctx: HealthContext) -> None:
        super().__init__(ctx)
        # per GPU (index, pci): (frame time, replay counter) readings within the last hour
        self._replays: dict[tuple[str, str], deque[tuple[float, float]]] = {}

    def _replay_rate(self, g: tuple[str, str], ts: float, value: float) -> float | None:
        hist = self._replays.setdefault(g, deque())
        if hist and (value < hist[-1][1] or ts < hist[-1][0]):
            hist.clear()  # counter reset (driver reload) or clock step: start again
        if not hist or ts > hist[-1][0]:
            hist.append((ts, value))
        while len(hist) > 2 and ts - hist[1][0] >= REPLAY_RATE_HISTORY:
            hist.popleft()
        if len(hist) < 2:
            return None
        t0, v0 = hist[0]
        t1, v1 = hist[-1]
        return (v1 - v0) * 3600.0 / max(t1 - t0, REPLAY_RATE_MIN_SPAN)

    def run(self) -> CheckResult:
        got = self.gpus()
        if got is None:
            return CheckResult(self.name, "OK", "no GPU")
        frame, per = got
        limit = self.ctx.config.thresholds.pcie_replays_per_hour_warning
        findings: list[Finding] = []
        details: dict[str, object] = {}
        for g in list(self._replays):
            if g not in per.gpus:
                del self._replays[g]
        for g in per.gpus:
            if per.lost(g):
                continue
            who = _who(g)
            v = per.value
            gen = v("swarm_gpu_pcie_link_generation", g, kind="current")
            gen_max = v("swarm_gpu_pcie_link_generation", g, kind="max")
            width = v("swarm_gpu_pcie_link_width", g, kind="current")
            width_max = v("swarm_gpu_pcie_link_width", g, kind="max")
            util = v("swarm_gpu_utilization_ratio", g)
            replays = v("swarm_gpu_pcie_replay_errors_total", g)
            rate = None if replays is None else self._replay_rate(g, frame.timestamp, replays)
            details[g[0]] = {"pci_bus_id": g[1], "generation": gen, "generation_max": gen_max,
                             "width": width, "width_max": width_max, "utilization": util,
                             "replays": replays, "replays_per_hour": rate}
            if width is not None and width_max is not None and 0 < width < width_max:
                findings.append(("WARNING", f"{who}: PCIe link x{width:g} of x{width_max:g}: "
                                 "check the riser/slot seating", "investigate"))
            # GPUs lower the link generation when idle to save power: only a loaded GPU
            # on a slower link is a problem.
            if (gen is not None and gen_max is not None and 0 < gen < gen_max
                    and util is not None and util > 0):
                findings.append(("WARNING", f"{who}: PCIe link at Gen{gen:g} of "
                                 f"Gen{gen_max:g} under load", "investigate"))
            if rate is not None and rate > 0 and rate >= limit:
                findings.append(("WARNING", f"{who}: {rate:.0f} PCIe replays per hour "
                                 f"(warning at {limit:g}): check the link", "investigate"))
        return self.result(findings, f"PCIe links healthy on {len(per.gpus)} GPU(s)", details)


def kernel_module_version(proc_root: Path) -> str | None:
    """The loaded NVIDIA kernel module's version from <proc>/driver/nvidia/version, or
    None when the file is missing (module not loaded) or unreadable."""
    try:
        text = (proc_root / "driver" / "nvidia" / "version").read_text(errors="replace")
    except OSError:
        return None
    m = _MODULE_VERSION.search(text)
    return m.group(1) if m else None


class GpuDriverCheck(_Base):
    name = "gpu_driver"

    def run(self) -> CheckResult:
        path = self.ctx.proc_root / "driver" / "nvidia" / "version"
        module = kernel_module_version(self.ctx.proc_root)
        frame = self.ctx.frame()
        nvml = frame.one("swarm_gpu_nvml_available") == 1.0
        library = ""
        for labels, _v in frame.get("swarm_gpu_driver_info"):
            library = labels.get("driver_version", "")
        details = {"kernel_module": module, "library": library or None}
        if not nvml:
            why = _nvml_message(frame)
            if "mismatch" in why.lower():
                return CheckResult(self.name, "CRITICAL",
                                   f"driver/library version mismatch ({why}): reboot to load "
                                   "the new kernel module", "reboot", details)
            if module is None:
                return CheckResult(self.name, "OK", "no NVIDIA driver", None, details)
            return CheckResult(self.name, "WARNING",
                               f"NVIDIA kernel module {module} loaded but NVML not available: "
                               f"{why}", "investigate", details)
        if module is None:
            return CheckResult(self.name, "OK",
                               f"driver {library or 'unknown'} (kernel module version not "
                               f"visible in {path})", None, details)
        if library and library != module:
            return CheckResult(self.name, "CRITICAL",
                               f"driver/library version mismatch: kernel module {module}, "
                               f"NVML library {library}: reboot to load the new kernel module",
                               "reboot", details)
        return CheckResult(self.name, "OK", f"driver {module} (kernel module and library "
                           "agree)", None, details)


def create(ctx: HealthContext) -> list[HealthCheck]:
    return [GpuCountCheck(ctx), GpuLostCheck(ctx), GpuMemoryCheck(ctx), GpuThermalCheck(ctx),
            GpuPcieCheck(ctx), GpuDriverCheck(ctx)]
