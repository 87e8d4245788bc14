"""NVIDIA GPUs through NVML (the real pynvml): load, memory, power, clocks, ECC, PCIe, loss.

Loading: when ``monitoring.nvml_library`` names a file it is loaded first with
``ctypes.CDLL``; pynvml's own ``CDLL("libnvidia-ml.so.1")`` then finds that object by its
soname. Otherwise pynvml searches the system. ``nvmlInit`` runs lazily on the first
collect() and, while it fails, at most every 30 s, so a driver installed after the agent
started is picked up; ``close()`` calls ``nvmlShutdown``.

Every reading is independent. NOT_SUPPORTED, NO_PERMISSION and FUNCTION_NOT_FOUND omit the
sample and are remembered per (GPU, reading), so the hot path makes no failing call for
them again. A GPU that answers GPU_IS_LOST is exported as ``swarm_gpu_lost 1`` with its
cached labels and nothing else, and the collector reports ``degraded`` naming it. Handles
and the identity labels (name, UUID, PCI bus id) are read once per GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pynvml
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..collector import CollectorContext, CollectorStatus

__all__ = ["CLOCK_EVENT_REASONS", "INIT_RETRY_SECONDS", "GpuCollector", "create"]

INIT_RETRY_SECONDS = 30.0
"""While nvmlInit fails, it is retried at most this often."""

# nvmlReturn_t codes (stable ABI values; named here so older pynvml releases work too).
_ERROR_NOT_SUPPORTED = 3
_ERROR_NO_PERMISSION = 4
_ERROR_FUNCTION_NOT_FOUND = 13
_ERROR_GPU_IS_LOST = 15
_ERROR_ARGUMENT_VERSION_MISMATCH = 25
_UNSUPPORTED = frozenset({_ERROR_NOT_SUPPORTED, _ERROR_NO_PERMISSION, _ERROR_FUNCTION_NOT_FOUND})
_TRY_NEXT_IMPL = frozenset({_ERROR_FUNCTION_NOT_FOUND, _ERROR_ARGUMENT_VERSION_MISMATCH})

_NVML_TEMPERATURE_GPU = 0
_NVML_CLOCK_SM = 1
_NVML_CLOCK_MEM = 2
_NVML_MEMORY_ERROR_CORRECTED = 0
_NVML_MEMORY_ERROR_UNCORRECTED = 1
_NVML_VOLATILE_ECC = 0
_NVML_AGGREGATE_ECC = 1
_NVML_RETIRED_MULTIPLE_SINGLE_BIT = 0
_NVML_RETIRED_DOUBLE_BIT = 1
_NVML_MEMORY_V2 = 0x02000028  # nvmlMemory_v2: sizeof(nvmlMemory_v2_t) | 2 << 24

CLOCK_EVENT_REASONS: tuple[tuple[str, int], ...] = (
    ("gpu_idle", 0x001),
    ("applications_clocks_setting", 0x002),
    ("sw_power_cap", 0x004),
    ("hw_slowdown", 0x008),
    ("sync_boost", 0x010),
    ("sw_thermal_slowdown", 0x020),
    ("hw_thermal_slowdown", 0x040),
    ("hw_power_brake_slowdown", 0x080),
    ("display_clock_setting", 0x100),
)
"""nvmlClocksEventReason* bits, as (label value of ``reason``, bit)."""

_DEVICE_LABELS = ("gpu", "uuid", "pci_bus_id", "name")


@dataclass(frozen=True)
class _Family:
    name: str
    help: str
    counter: bool = False
    labels: tuple[str, ...] = ()


_FAMILIES: dict[str, _Family] = {
    "util": _Family("swarm_gpu_utilization_ratio",
                    "Fraction of the last sample period in which a kernel ran on the GPU."),
    "mem_util": _Family("swarm_gpu_memory_utilization_ratio",
                        "Fraction of the last sample period in which device memory was read "
                        "or written."),
    "mem_used": _Family("swarm_gpu_memory_used_bytes",
                        "Device memory allocated, in bytes (memory reserved by the driver "
                        "excluded where NVML reports it apart)."),
    "mem_total": _Family("swarm_gpu_memory_total_bytes", "Device memory, in bytes."),
    "temp": _Family("swarm_gpu_temperature_celsius", "GPU core temperature."),
    "power": _Family("swarm_gpu_power_watts", "Power draw of the board."),
    "power_limit": _Family("swarm_gpu_power_limit_watts", "Power limit the driver enforces."),
    "energy": _Family("swarm_gpu_energy_joules_total",
                      "Energy consumed since the driver was loaded.", counter=True),
    "sm_clock": _Family("swarm_gpu_sm_clock_hertz", "Current SM clock."),
    "mem_clock": _Family("swarm_gpu_memory_clock_hertz", "Current memory clock."),
    "event_reasons": _Family("swarm_gpu_clock_event_reasons",
                             "Raw nvmlClocksEventReason bitmask: why clocks are held down now."),
    "event_active": _Family("swarm_gpu_clock_event_active",
                            "1 while the clocks event reason is active, else 0.",
                            labels=("reason",)),
    "ecc": _Family("swarm_gpu_ecc_errors_total",
                   "ECC errors; counter=volatile since the driver was loaded, aggregate over "
                   "the GPU's life.", counter=True, labels=("error_type", "counter")),
    "retired": _Family("swarm_gpu_retired_pages",
                       "Device memory pages retired, by cause.", labels=("cause",)),
    "retired_pending": _Family("swarm_gpu_retired_pages_pending",
                               "1 when pages wait to be retired at the next driver reload."),
    "remapped": _Family("swarm_gpu_remapped_rows",
                        "Memory rows remapped, by the kind of error that caused it.",
                        labels=("cause",)),
    "remapped_pending": _Family("swarm_gpu_remapped_rows_pending",
                                "1 when a row remapping waits for a GPU reset."),
    "remapped_failed": _Family("swarm_gpu_remapped_rows_failed",
                               "1 when a row remapping failed (the GPU needs service)."),
    "pcie_replay": _Family("swarm_gpu_pcie_replay_errors_total",
                           "PCIe replay counter.", counter=True),
    "pcie_gen": _Family("swarm_gpu_pcie_link_generation",
                        "PCIe link generation, current and maximum.", labels=("kind",)),
    "pcie_width": _Family("swarm_gpu_pcie_link_width",
                          "PCIe link width in lanes, current and maximum.", labels=("kind",)),
    "fan": _Family("swarm_gpu_fan_speed_ratio",
                   "Fan speed as a fraction of its maximum (the target the driver sets)."),
    "lost": _Family("swarm_gpu_lost", "1 when NVML reports the GPU as lost (fell off the bus)."),
}

Reader = Callable[[Any], Any]
"""Reads one value from an NVML device handle; raises pynvml.NVMLError."""

_Sample = tuple[str, tuple[str, ...], float]
"""(family key, values of the family's own labels, value)."""


def _memory_v2(handle: Any) -> Any:
    return pynvml.nvmlDeviceGetMemoryInfo(handle, version=_NVML_MEMORY_V2)


def _memory_v1(handle: Any) -> Any:
    return pynvml.nvmlDeviceGetMemoryInfo(handle)


def _temperature(handle: Any) -> Any:
    return pynvml.nvmlDeviceGetTemperature(handle, _NVML_TEMPERATURE_GPU)


def _temperature_v(handle: Any) -> Any:
    return pynvml.nvmlDeviceGetTemperatureV(handle, _NVML_TEMPERATURE_GPU)


def _sm_clock(handle: Any) -> Any:
    return pynvml.nvmlDeviceGetClockInfo(handle, _NVML_CLOCK_SM)


def _mem_clock(handle: Any) -> Any:
    return pynvml.nvmlDeviceGetClockInfo(handle, _NVML_CLOCK_MEM)


def _ecc_reader(error_type: int, counter: int) -> Reader:
    def read(handle: Any) -> Any:
        return pynvml.nvmlDeviceGetTotalEccErrors(handle, error_type, counter)

    return read


def _retired_reader(cause: int) -> Reader:
    def read(handle: Any) -> Any:
        return len(pynvml.nvmlDeviceGetRetiredPages(handle, cause))

    return read


def _impls(*names: str) -> tuple[Reader, ...]:
    """The pynvml functions of these names that this pynvml release has, in order."""
    return tuple(getattr(pynvml, n) for n in names if hasattr(pynvml, n))


def _reader(name: str) -> tuple[Reader, ...]:
    return (lambda handle: getattr(pynvml, name)(handle),)


# Each reading: its cache key and its implementations, newest API first. An implementation
# answering FUNCTION_NOT_FOUND or ARGUMENT_VERSION_MISMATCH hands over to the next one, and
# the choice is kept for every GPU (it is a property of the loaded library).
_R_UTIL = _reader("nvmlDeviceGetUtilizationRates")
_R_MEMORY = (_memory_v2, _memory_v1)
_R_TEMP: tuple[Reader, ...] = (_temperature,) + (
    (_temperature_v,) if hasattr(pynvml, "nvmlDeviceGetTemperatureV") else ()
)
_R_POWER = _reader("nvmlDeviceGetPowerUsage")
_R_POWER_LIMIT = _reader("nvmlDeviceGetEnforcedPowerLimit")
_R_ENERGY = _reader("nvmlDeviceGetTotalEnergyConsumption")
_R_SM_CLOCK = (_sm_clock,)
_R_MEM_CLOCK = (_mem_clock,)
_R_EVENT_REASONS = _impls(
    "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"
)
_R_ECC: tuple[tuple[str, str, str, tuple[Reader, ...]], ...] = tuple(
    (f"ecc_{etype}_{counter}", etype, counter, (_ecc_reader(etype_code, counter_code),))
    for etype, etype_code in (("corrected", _NVML_MEMORY_ERROR_CORRECTED),
                              ("uncorrected", _NVML_MEMORY_ERROR_UNCORRECTED))
    for counter, counter_code in (("volatile", _NVML_VOLATILE_ECC),
                                  ("aggregate", _NVML_AGGREGATE_ECC))
)
_R_RETIRED: tuple[tuple[str, str, tuple[Reader, ...]], ...] = (
    ("retired_sbe", "single_bit_ecc", (_retired_reader(_NVML_RETIRED_MULTIPLE_SINGLE_BIT),)),
    ("retired_dbe", "double_bit_ecc", (_retired_reader(_NVML_RETIRED_DOUBLE_BIT),)),
)
_R_RETIRED_PENDING = _reader("nvmlDeviceGetRetiredPagesPendingStatus")
_R_REMAPPED = _reader("nvmlDeviceGetRemappedRows")
_R_PCIE_REPLAY = _reader("nvmlDeviceGetPcieReplayCounter")
_R_PCIE_GEN = _reader("nvmlDeviceGetCurrPcieLinkGeneration")
_R_PCIE_WIDTH = _reader("nvmlDeviceGetCurrPcieLinkWidth")
_R_PCIE_GEN_MAX = _reader("nvmlDeviceGetMaxPcieLinkGeneration")
_R_PCIE_WIDTH_MAX = _reader("nvmlDeviceGetMaxPcieLinkWidth")
_R_FAN = _reader("nvmlDeviceGetFanSpeed")


class _GpuLost(Exception):
    """A device call answered NVML_ERROR_GPU_IS_LOST."""


@dataclass
class _Device:
    index: int
    handle: Any = None
    labels: tuple[str, str, str, str] | None = None  # gpu, uuid, pci_bus_id, name
    unsupported: set[str] = field(default_factory=set)
    static: dict[str, float | None] = field(default_factory=dict)  # hardware constants
    problems: list[str] = field(default_factory=list)  # this round's unexpected errors

    def label_values(self) -> tuple[str, str, str, str]:
        return self.labels if self.labels is not None else (str(self.index), "", "", "")

    def describe(self) -> str:
        _, uuid, bus_id, _ = self.label_values()
        return f"GPU {self.index} (uuid {uuid or 'unknown'}, pci {bus_id or 'unknown'})"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(raw: int) -> str:
    """12040 -> '12.4' (NVML encodes 1000 * major + 10 * minor)."""
    return f"{raw // 1000}.{raw % 1000 // 10}"


class GpuCollector:
    name = "gpu"

    def __init__(self, ctx: CollectorContext) -> None:
        self._clock = ctx.clock
        self._library_path = ctx.nvml_library
        self._lock = threading.Lock()
        self._preloaded: ctypes.CDLL | None = None
        self._initialized = False
        self._last_attempt: float | None = None
        self._driver: tuple[str, str, str] = ("", "", "")
        self._devices: dict[int, _Device] = {}
        self._impl_choice: dict[str, int] = {}
        self._status = CollectorStatus("unavailable", "NVML not initialised yet")

    # -- lifecycle ------------------------------------------------------------------------

    def _ensure_init(self) -> bool:
        if self._initialized:
            return True
        now = self._clock.monotonic()
        if self._last_attempt is not None and now - self._last_attempt < INIT_RETRY_SECONDS:
            return False  # keep the last failure as the status until the next attempt
        self._last_attempt = now
        if self._library_path and self._preloaded is None:
            try:
                self._preloaded = ctypes.CDLL(self._library_path)
            except OSError as exc:
                path = self._library_path
                why = "not found" if not os.path.exists(path) else f"cannot be loaded: {exc}"
                self._status = CollectorStatus("unavailable", f"no NVIDIA driver: {path} {why}")
                return False
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_LibraryNotFound:
            self._status = CollectorStatus(
                "unavailable", "no NVIDIA driver: libnvidia-ml.so.1 not found"
            )
            return False
        except pynvml.NVMLError as exc:
            self._status = CollectorStatus("unavailable", f"NVML init failed: {exc}")
            return False
        self._initialized = True
        self._devices.clear()
        self._driver = self._read_driver_info()
        return True

    def _read_driver_info(self) -> tuple[str, str, str]:
        def system(reader: Callable[[], Any]) -> str:
            try:
                return _text(reader())
            except pynvml.NVMLError:
                return ""

        cuda = ""
        for fn_name in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
            if not hasattr(pynvml, fn_name):
                continue
            try:
                cuda = _cuda_version(int(getattr(pynvml, fn_name)()))
                break
            except pynvml.NVMLError:
                continue
        return (
            system(pynvml.nvmlSystemGetDriverVersion),
            system(pynvml.nvmlSystemGetNVMLVersion),
            cuda,
        )

    def _shutdown(self) -> None:
        if self._initialized:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
        self._initialized = False
        self._devices.clear()

    def close(self) -> None:
        with self._lock:
            self._shutdown()
            self._last_attempt = None

    def status(self) -> CollectorStatus:
        return self._status

    # -- collection -----------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        with self._lock:
            return self._collect()

    def _collect(self) -> list[Metric]:
        if not self._ensure_init():
            return [self._available(False)]
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            # The driver went away under us (unloaded, RM mismatch after an update):
            # start over, with the usual retry delay.
            self._shutdown()
            self._last_attempt = self._clock.monotonic()
            self._status = CollectorStatus("unavailable", f"NVML query failed: {exc}")
            return [self._available(False)]

        families = {
            key: (CounterMetricFamily if fam.counter else GaugeMetricFamily)(
                fam.name, fam.help, labels=[*_DEVICE_LABELS, *fam.labels]
            )
            for key, fam in _FAMILIES.items()
        }
        problems: list[str] = []
        lost: list[str] = []
        for index in [i for i in self._devices if i >= count]:
            del self._devices[index]
        for index in range(count):
            dev = self._devices.get(index)
            if dev is None:
                dev = self._devices[index] = _Device(index)
            dev.problems.clear()
            try:
                samples = self._read_device(dev)
            except _GpuLost:
                lost.append(dev.describe())
                families["lost"].add_metric(dev.label_values(), 1.0)
                continue
            if samples is None:  # no handle this round; the problem is in dev.problems
                problems.extend(dev.problems)
                continue
            labels = dev.label_values()
            for key, extra, value in samples:
                families[key].add_metric((*labels, *extra), value)
            families["lost"].add_metric(labels, 0.0)
            problems.extend(f"{dev.describe()}: {p}" for p in dev.problems)

        out: list[Metric] = [self._available(True)]
        out.append(GaugeMetricFamily("swarm_gpus", "GPUs NVML reports.", value=count))
        info = GaugeMetricFamily(
            "swarm_gpu_driver_info",
            "NVIDIA driver, NVML and CUDA driver API versions (value always 1).",
            labels=["driver_version", "nvml_version", "cuda_version"],
        )
        info.add_metric(self._driver, 1.0)
        out.append(info)
        out.extend(fam for fam in families.values() if fam.samples)

        if count == 0:
            self._status = CollectorStatus("unavailable", "NVML loaded but no GPU found")
        elif lost or problems:
            notes = [f"{d} is lost (NVML: GPU is lost; it needs a reset or a reboot)"
                     for d in lost]
            self._status = CollectorStatus("degraded", "; ".join(notes + problems))
        else:
            self._status = CollectorStatus(
                "ok", f"{count} GPU{'s' if count != 1 else ''}, driver {self._driver[0]}"
            )
        return out

    @staticmethod
    def _available(up: bool) -> Metric:
        return GaugeMetricFamily(
            "swarm_gpu_nvml_available",
            "1 when the NVIDIA management library is loaded and initialised, else 0.",
            value=1.0 if up else 0.0,
        )

    def _setup(self, dev: _Device) -> bool:
        """Get the handle and identity labels once; False when there is no handle."""
        if dev.handle is None:
            try:
                dev.handle = pynvml.nvmlDeviceGetHandleByIndex(dev.index)
            except pynvml.NVMLError as exc:
                if exc.value == _ERROR_GPU_IS_LOST:
                    raise _GpuLost from None
                dev.problems.append(f"GPU {dev.index}: cannot get an NVML handle: {exc}")
                return False
        if dev.labels is None:
            complete = True

            def ident(reader: Reader) -> str:
                nonlocal complete
                try:
                    return _text(reader(dev.handle))
                except pynvml.NVMLError as exc:
                    if exc.value == _ERROR_GPU_IS_LOST:
                        raise _GpuLost from None
                    if exc.value not in _UNSUPPORTED:
                        complete = False  # read it again next round
                    return ""

            uuid = ident(pynvml.nvmlDeviceGetUUID)
            bus_id = ident(lambda h: pynvml.nvmlDeviceGetPciInfo(h).busId)
            name = ident(pynvml.nvmlDeviceGetName)
            labels = (str(dev.index), uuid, bus_id, name)
            if not complete:
                return True  # use them this round, uncached
            dev.labels = labels
        return True

    def _read(self, dev: _Device, key: str, impls: Sequence[Reader]) -> Any:
        """One reading, or None when it is unsupported or failed this round."""
        if key in dev.unsupported or not impls:
            return None
        choice = self._impl_choice.get(key, 0)
        while True:
            try:
                return impls[choice](dev.handle)
            except pynvml.NVMLError as exc:
                code = exc.value
                if code == _ERROR_GPU_IS_LOST:
                    raise _GpuLost from None
                if code in _TRY_NEXT_IMPL and choice + 1 < len(impls):
                    choice += 1
                    self._impl_choice[key] = choice
                    continue
                if code in _UNSUPPORTED or code in _TRY_NEXT_IMPL:
                    dev.unsupported.add(key)
                else:
                    dev.problems.append(f"{key}: {exc}")
                return None

    def _read_static(self, dev: _Device, key: str, impls: Sequence[Reader]) -> float | None:
        """A hardware constant (maximum link generation/width): read until it answers."""
        if key in dev.static:
            return dev.static[key]
        raw = self._read(dev, key, impls)
        value = None if raw is None else float(raw)
        if value is not None or key in dev.unsupported:
            dev.static[key] = value
        return value

    def _read_device(self, dev: _Device) -> list[_Sample] | None:
        """Every reading of one GPU; raises _GpuLost, None when there is no handle."""
        if not self._setup(dev):
            return None
        out: list[_Sample] = []
        add = out.append

        util = self._read(dev, "util", _R_UTIL)
        if util is not None:
            add(("util", (), util.gpu / 100.0))
            add(("mem_util", (), util.memory / 100.0))
        mem = self._read(dev, "memory", _R_MEMORY)
        if mem is not None:
            add(("mem_used", (), float(mem.used)))
            add(("mem_total", (), float(mem.total)))
        value = self._read(dev, "temp", _R_TEMP)
        if value is not None:
            add(("temp", (), float(value)))
        value = self._read(dev, "power", _R_POWER)
        if value is not None:
            add(("power", (), value / 1000.0))
        value = self._read(dev, "power_limit", _R_POWER_LIMIT)
        if value is not None:
            add(("power_limit", (), value / 1000.0))
        value = self._read(dev, "energy", _R_ENERGY)
        if value is not None:
            add(("energy", (), value / 1000.0))
        value = self._read(dev, "sm_clock", _R_SM_CLOCK)
        if value is not None:
            add(("sm_clock", (), value * 1e6))
        value = self._read(dev, "mem_clock", _R_MEM_CLOCK)
        if value is not None:
            add(("mem_clock", (), value * 1e6))
        value = self._read(dev, "event_reasons", _R_EVENT_REASONS)
        if value is not None:
            mask = int(value)
            add(("event_reasons", (), float(mask)))
            for reason, bit in CLOCK_EVENT_REASONS:
                add(("event_active", (reason,), 1.0 if mask & bit else 0.0))
        for key, etype, counter, impls in _R_ECC:
            value = self._read(dev, key, impls)
            if value is not None:
                add(("ecc", (etype, counter), float(value)))
        for key, cause, impls in _R_RETIRED:
            value = self._read(dev, key, impls)
            if value is not None:
                add(("retired", (cause,), float(value)))
        value = self._read(dev, "retired_pending", _R_RETIRED_PENDING)
        if value is not None:
            add(("retired_pending", (), 1.0 if value else 0.0))
        rows = self._read(dev, "remapped", _R_REMAPPED)
        if rows is not None:
            correctable, uncorrectable, pending, failed = rows
            add(("remapped", ("correctable",), float(correctable)))
            add(("remapped", ("uncorrectable",), float(uncorrectable)))
            add(("remapped_pending", (), 1.0 if pending else 0.0))
            add(("remapped_failed", (), 1.0 if failed else 0.0))
        value = self._read(dev, "pcie_replay", _R_PCIE_REPLAY)
        if value is not None:
            add(("pcie_replay", (), float(value)))
        value = self._read(dev, "pcie_gen", _R_PCIE_GEN)
        if value is not None:
            add(("pcie_gen", ("current",), float(value)))
        static = self._read_static(dev, "pcie_gen_max", _R_PCIE_GEN_MAX)
        if static is not None:
            add(("pcie_gen", ("max",), static))
        value = self._read(dev, "pcie_width", _R_PCIE_WIDTH)
        if value is not None:
            add(("pcie_width", ("current",), float(value)))
        static = self._read_static(dev, "pcie_width_max", _R_PCIE_WIDTH_MAX)
        if static is not None:
            add(("pcie_width", ("max",), static))
        value = self._read(dev, "fan", _R_FAN)
        if value is not None:
            add(("fan", (), value / 100.0))
        return out


def create(ctx: CollectorContext) -> GpuCollector:
    return GpuCollector(ctx)
