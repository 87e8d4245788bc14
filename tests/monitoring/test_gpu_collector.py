"""The GPU collector, through the real pynvml, against the fake libnvidia-ml.so.1.

The fake library (tests/fixtures/fake_nvml/fake_nvml.c) re-reads its state file on every
call, so a test changes what "the driver" answers by rewriting the file between two
collect() calls. Once loaded into this process the library stays loaded (and pynvml keeps
its handle), so the "no library at all" cases run in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from swarm_maint.config import MonitoringConfig
from swarm_maint.monitoring.collector import CollectorContext
from swarm_maint.monitoring.collectors.gpu import (
    CLOCK_EVENT_REASONS,
    INIT_RETRY_SECONDS,
    GpuCollector,
    create,
)
from tests.fake_clock import FakeClock
from tests.fake_nvml import FakeNvmlState, call_count, init_refcount, reset_call_counts
from tests.metric_samples import names, sample_map, value

FakeNvml = tuple[Path, FakeNvmlState]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Expected = dict[Any, float]  # {name or (name, (label, value), ...): value}

NOT_SUPPORTED = 3
NO_PERMISSION = 4
DRIVER_NOT_LOADED = 9
FUNCTION_NOT_FOUND = 13
UNKNOWN = 999

GPU0 = {
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",
    "pci_bus_id": "00000000:17:00.0",
    "util_gpu": 55,
    "util_mem": 23,
    "mem_total": 85_520_809_984,
    "mem_used": 42_949_672_960,
    "mem_reserved": 536_870_912,
    "temp": 61,
    "power_mw": 312_345,
    "power_limit_mw": 700_000,
    "energy_mj": 123_456_789,
    "clock_sm_mhz": 1755,
    "clock_mem_mhz": 2619,
    "clocks_event_reasons": 0x5,  # gpu_idle | sw_power_cap
    "ecc_corrected_volatile": 7,
    "ecc_corrected_aggregate": 42,
    "ecc_uncorrected_volatile": 0,
    "ecc_uncorrected_aggregate": 1,
    "retired_sbe": 2,
    "retired_dbe": 1,
    "retired_pending": 1,
    "remapped_correctable": 3,
    "remapped_uncorrectable": 1,
    "remapped_pending": 1,
    "remapped_failed": 0,
    "pcie_replay": 12,
    "pcie_gen_current": 4,
    "pcie_gen_max": 5,
    "pcie_width_current": 8,
    "pcie_width_max": 16,
    "fan_speed": 40,
}

GPU1 = {
    "name": "NVIDIA A100-SXM4-40GB",
    "uuid": "GPU-ffeeddcc-bbaa-9988-7766-554433221100",
    "pci_bus_id": "00000000:65:00.0",
    "util_gpu": 100,
    "util_mem": 5,
    "mem_total": 42_949_672_960,
    "mem_used": 1_048_576,
    "temp": 80,
    "power_mw": 398_000,
    "power_limit_mw": 400_000,
    "energy_mj": 5_000,
    "clock_sm_mhz": 1410,
    "clock_mem_mhz": 1215,
    "clocks_event_reasons": 0x0,
    "ecc_corrected_volatile": 0,
    "ecc_corrected_aggregate": 0,
    "ecc_uncorrected_volatile": 2,
    "ecc_uncorrected_aggregate": 3,
    "retired_sbe": 0,
    "retired_dbe": 0,
    "retired_pending": 0,
    "remapped_correctable": 0,
    "remapped_uncorrectable": 0,
    "remapped_pending": 0,
    "remapped_failed": 1,
    "pcie_replay": 0,
    "pcie_gen_current": 4,
    "pcie_gen_max": 4,
    "pcie_width_current": 16,
    "pcie_width_max": 16,
    "fan_speed": 0,
}

# What the collector must export for GPU0 / GPU1, in base units, written out by hand.
GPU0_EXPECTED: Expected = {
    "swarm_gpu_utilization_ratio": 0.55,
    "swarm_gpu_memory_utilization_ratio": 0.23,
    "swarm_gpu_memory_used_bytes": 42_949_672_960.0,  # v2 API: reserved memory apart
    "swarm_gpu_memory_total_bytes": 85_520_809_984.0,
    "swarm_gpu_temperature_celsius": 61.0,
    "swarm_gpu_power_watts": 312.345,
    "swarm_gpu_power_limit_watts": 700.0,
    "swarm_gpu_energy_joules_total": 123_456.789,
    "swarm_gpu_sm_clock_hertz": 1.755e9,
    "swarm_gpu_memory_clock_hertz": 2.619e9,
    "swarm_gpu_clock_event_reasons": 5.0,
    ("swarm_gpu_ecc_errors_total", ("error_type", "corrected"), ("counter", "volatile")): 7.0,
    ("swarm_gpu_ecc_errors_total", ("error_type", "corrected"), ("counter", "aggregate")): 42.0,
    ("swarm_gpu_ecc_errors_total", ("error_type", "uncorrected"), ("counter", "volatile")): 0.0,
    ("swarm_gpu_ecc_errors_total", ("error_type", "uncorrected"),
     ("counter", "aggregate")): 1.0,
    ("swarm_gpu_retired_pages", ("cause", "single_bit_ecc")): 2.0,
    ("swarm_gpu_retired_pages", ("cause", "double_bit_ecc")): 1.0,
    "swarm_gpu_retired_pages_pending": 1.0,
    ("swarm_gpu_remapped_rows", ("cause", "correctable")): 3.0,
    ("swarm_gpu_remapped_rows", ("cause", "uncorrectable")): 1.0,
    "swarm_gpu_remapped_rows_pending": 1.0,
    "swarm_gpu_remapped_rows_failed": 0.0,
    "swarm_gpu_pcie_replay_errors_total": 12.0,
    ("swarm_gpu_pcie_link_generation", ("kind", "current")): 4.0,
    ("swarm_gpu_pcie_link_generation", ("kind", "max")): 5.0,
    ("swarm_gpu_pcie_link_width", ("kind", "current")): 8.0,
    ("swarm_gpu_pcie_link_width", ("kind", "max")): 16.0,
    "swarm_gpu_fan_speed_ratio": 0.4,
    "swarm_gpu_lost": 0.0,
    **{("swarm_gpu_clock_event_active", ("reason", r)): 1.0 if r in {"gpu_idle",
                                                                      "sw_power_cap"} else 0.0
       for r, _ in CLOCK_EVENT_REASONS},
}

GPU1_EXPECTED: Expected = {
    "swarm_gpu_utilization_ratio": 1.0,
    "swarm_gpu_memory_utilization_ratio": 0.05,
    "swarm_gpu_memory_used_bytes": 1_048_576.0,
    "swarm_gpu_memory_total_bytes": 42_949_672_960.0,
    "swarm_gpu_temperature_celsius": 80.0,
    "swarm_gpu_power_watts": 398.0,
    "swarm_gpu_power_limit_watts": 400.0,
    "swarm_gpu_energy_joules_total": 5.0,
    "swarm_gpu_sm_clock_hertz": 1.41e9,
    "swarm_gpu_memory_clock_hertz": 1.215e9,
    "swarm_gpu_clock_event_reasons": 0.0,
    ("swarm_gpu_ecc_errors_total", ("error_type", "corrected"), ("counter", "volatile")): 0.0,
    ("swarm_gpu_ecc_errors_total", ("error_type", "corrected"), ("counter", "aggregate")): 0.0,
    ("swarm_gpu_ecc_errors_total", ("error_type", "uncorrected"), ("counter", "volatile")): 2.0,
    ("swarm_gpu_ecc_errors_total", ("error_type", "uncorrected"),
     ("counter", "aggregate")): 3.0,
    ("swarm_gpu_retired_pages", ("cause", "single_bit_ecc")): 0.0,
    ("swarm_gpu_retired_pages", ("cause", "double_bit_ecc")): 0.0,
    "swarm_gpu_retired_pages_pending": 0.0,
    ("swarm_gpu_remapped_rows", ("cause", "correctable")): 0.0,
    ("swarm_gpu_remapped_rows", ("cause", "uncorrectable")): 0.0,
    "swarm_gpu_remapped_rows_pending": 0.0,
    "swarm_gpu_remapped_rows_failed": 1.0,
    "swarm_gpu_pcie_replay_errors_total": 0.0,
    ("swarm_gpu_pcie_link_generation", ("kind", "current")): 4.0,
    ("swarm_gpu_pcie_link_generation", ("kind", "max")): 4.0,
    ("swarm_gpu_pcie_link_width", ("kind", "current")): 16.0,
    ("swarm_gpu_pcie_link_width", ("kind", "max")): 16.0,
    "swarm_gpu_fan_speed_ratio": 0.0,
    "swarm_gpu_lost": 0.0,
    **{("swarm_gpu_clock_event_active", ("reason", r)): 0.0 for r, _ in CLOCK_EVENT_REASONS},
}


def gpu_labels(index: int, gpu: dict[str, object]) -> dict[str, str]:
    return {
        "gpu": str(index),
        "uuid": str(gpu["uuid"]),
        "pci_bus_id": str(gpu["pci_bus_id"]),
        "name": str(gpu["name"]),
    }


def expand(expected: Expected, labels: dict[str, str]) -> Samples:
    """{name or (name, (label, value)...): v} -> sample_map() form with the GPU labels."""
    out: Samples = {}
    for key, v in expected.items():
        name, extra = (key, {}) if isinstance(key, str) else (key[0], dict(key[1:]))
        out[(name, frozenset({**labels, **extra}.items()))] = v
    return out


def gpu_samples(families: list[Metric], index: int) -> Samples:
    return {
        key: v
        for key, v in sample_map(families).items()
        if ("gpu", str(index)) in key[1]
    }


@pytest.fixture
def make_collector(fake_nvml: FakeNvml) -> Iterator[Callable[..., GpuCollector]]:
    """Builds collectors bound to the fake library; every one is closed at teardown."""
    library, _ = fake_nvml
    made: list[GpuCollector] = []

    def make(clock: FakeClock | None = None) -> GpuCollector:
        config = MonitoringConfig(nvml_library=str(library))
        ctx = CollectorContext(config=config, clock=clock or FakeClock())
        collector = create(ctx)
        made.append(collector)
        return collector

    yield make
    for collector in made:
        collector.close()


def test_two_gpus_every_family_exact(fake_nvml: FakeNvml, make_collector: Callable[...,
                                     GpuCollector]) -> None:
    _, state = fake_nvml
    state.write([GPU0, GPU1], driver_version="550.54.15", nvml_version="12.550.54.15",
                cuda_version=12040)
    collector = make_collector()

    families = collector.collect()

    expected = {
        ("swarm_gpu_nvml_available", frozenset()): 1.0,
        ("swarm_gpus", frozenset()): 2.0,
        ("swarm_gpu_driver_info", frozenset({"driver_version": "550.54.15",
                                             "nvml_version": "12.550.54.15",
                                             "cuda_version": "12.4"}.items())): 1.0,
        **expand(GPU0_EXPECTED, gpu_labels(0, GPU0)),
        **expand(GPU1_EXPECTED, gpu_labels(1, GPU1)),
    }
    assert sample_map(families) == expected
    assert collector.status().state == "ok"
    types = {fam.name: fam.type for fam in families}
    assert types["swarm_gpu_energy_joules"] == "counter"
    assert types["swarm_gpu_ecc_errors"] == "counter"
    assert types["swarm_gpu_pcie_replay_errors"] == "counter"
    assert types["swarm_gpu_temperature_celsius"] == "gauge"
    assert all(fam.documentation for fam in families)
    # The families render as valid exposition text.
    registry = CollectorRegistry()
    registry.register(_Static(families))
    text = generate_latest(registry).decode()
    assert 'swarm_gpu_power_watts{gpu="0",name="NVIDIA H100 80GB HBM3"' in text


class _Static:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def test_values_follow_the_driver_between_collects(
    fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector]
) -> None:
    _, state = fake_nvml
    state.write([GPU0])
    collector = make_collector()
    assert value(collector.collect(), "swarm_gpu_temperature_celsius", gpu="0") == 61.0
    state.update_gpu(0, temp=75, energy_mj=200_000_000)
    families = collector.collect()
    assert value(families, "swarm_gpu_temperature_celsius", gpu="0") == 75.0
    assert value(families, "swarm_gpu_energy_joules_total", gpu="0") == 200_000.0


@pytest.mark.parametrize(
    ("mask", "active"),
    [
        (0x0, set()),
        (0x1, {"gpu_idle"}),
        (0x2 | 0x8 | 0x40, {"applications_clocks_setting", "hw_slowdown",
                            "hw_thermal_slowdown"}),
        (0x4 | 0x10 | 0x20 | 0x80 | 0x100, {"sw_power_cap", "sync_boost",
                                            "sw_thermal_slowdown", "hw_power_brake_slowdown",
                                            "display_clock_setting"}),
        (0x1FF, {r for r, _ in CLOCK_EVENT_REASONS}),
        (0x200 | 0x400 | 0x4, {"sw_power_cap"}),  # bits the collector does not name
    ],
)
def test_clock_event_bits_decoded(
    fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector], mask: int,
    active: set[str],
) -> None:
    _, state = fake_nvml
    state.write([{**GPU0, "clocks_event_reasons": mask}])
    families = make_collector().collect()
    assert value(families, "swarm_gpu_clock_event_reasons", gpu="0") == float(mask)
    decoded = {
        reason
        for reason, _ in CLOCK_EVENT_REASONS
        if value(families, "swarm_gpu_clock_event_active", gpu="0", reason=reason) == 1.0
    }
    assert decoded == active
    assert len(CLOCK_EVENT_REASONS) == 9


def test_clock_event_reasons_fall_back_to_the_throttle_name(
    fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector]
) -> None:
    """A driver older than R535 has only nvmlDeviceGetCurrentClocksThrottleReasons."""
    _, state = fake_nvml
    state.write([{**GPU0, "error.nvmlDeviceGetCurrentClocksEventReasons": FUNCTION_NOT_FOUND}])
    collector = make_collector()
    families = collector.collect()
    assert value(families, "swarm_gpu_clock_event_reasons", gpu="0") == 5.0
    assert collector.status().state == "ok"


def test_memory_falls_back_to_v1(fake_nvml: FakeNvml,
                                 make_collector: Callable[..., GpuCollector]) -> None:
    _, state = fake_nvml
    state.write([{**GPU0, "error.nvmlDeviceGetMemoryInfo_v2": FUNCTION_NOT_FOUND}])
    collector = make_collector()
    families = collector.collect()
    # v1 counts the driver's reserved memory as used
    assert value(families, "swarm_gpu_memory_used_bytes", gpu="0") == 42_949_672_960 + 536_870_912
    assert value(families, "swarm_gpu_memory_total_bytes", gpu="0") == 85_520_809_984
    assert collector.status().state == "ok"


def test_temperature_falls_back_to_the_versioned_call(
    fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector]
) -> None:
    _, state = fake_nvml
    state.write([{**GPU0, "error.nvmlDeviceGetTemperature": FUNCTION_NOT_FOUND}])
    families = make_collector().collect()
    assert value(families, "swarm_gpu_temperature_celsius", gpu="0") == 61.0


UNSUPPORTED_CASES = [
    ("nvmlDeviceGetFanSpeed", {"swarm_gpu_fan_speed_ratio"}),
    ("nvmlDeviceGetPowerUsage", {"swarm_gpu_power_watts"}),
    ("nvmlDeviceGetTotalEnergyConsumption", {"swarm_gpu_energy_joules_total"}),
    ("nvmlDeviceGetTotalEccErrors", {"swarm_gpu_ecc_errors_total"}),
    ("nvmlDeviceGetRetiredPages", {"swarm_gpu_retired_pages"}),
    ("nvmlDeviceGetRemappedRows", {"swarm_gpu_remapped_rows", "swarm_gpu_remapped_rows_pending",
                                   "swarm_gpu_remapped_rows_failed"}),
    ("nvmlDeviceGetUtilizationRates", {"swarm_gpu_utilization_ratio",
                                       "swarm_gpu_memory_utilization_ratio"}),
]


@pytest.mark.parametrize("code", [NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND])
@pytest.mark.parametrize(("function", "missing"), UNSUPPORTED_CASES)
def test_unsupported_reading_is_omitted(
    fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector], function: str,
    missing: set[str], code: int,
) -> None:
    _, state = fake_nvml
    state.write([{**GPU0, f"error.{function}": code}, GPU1])
    collector = make_collector()

    families = collector.collect()

    full0 = expand(GPU0_EXPECTED, gpu_labels(0, GPU0))
    assert gpu_samples(families, 0) == {k: v for k, v in full0.items() if k[0] not in missing}
    assert gpu_samples(families, 1) == expand(GPU1_EXPECTED, gpu_labels(1, GPU1))
    assert collector.status().state == "ok"


def test_unsupported_reading_is_not_retried(
    fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector]
) -> None:
    library, state = fake_nvml
    state.write([{**GPU0, "error.nvmlDeviceGetFanSpeed": NOT_SUPPORTED}, GPU1])
    collector = make_collector()
    reset_call_counts(library)

    for _ in range(3):
        families = collector.collect()

    # GPU 0 was asked once, GPU 1 every time
    assert call_count(library, "nvmlDeviceGetFanSpeed") == 1 + 3
    assert "swarm_gpu_fan_speed_ratio" in names(families)
    assert value(families, "swarm_gpu_fan_speed_ratio", gpu="1") == 0.0


def test_handles_labels_and_hardware_constants_read_once(
    fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector]
) -> None:
    library, state = fake_nvml
    state.write([GPU0, GPU1])
    collector = make_collector()
    reset_call_counts(library)

    for _ in range(3):
        collector.collect()

    for function in ("nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetName", "nvmlDeviceGetUUID",
                     "nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetMaxPcieLinkGeneration",
                     "nvmlDeviceGetMaxPcieLinkWidth", "nvmlSystemGetDriverVersion"):
        expected = 1 if function.startswith("nvmlSystem") else 2
        assert call_count(library, function) == expected, function
    assert call_count(library, "nvmlDeviceGetUtilizationRates") == 2 * 3
    assert call_count(library, "nvmlInitWithFlags") == 1


def test_unexpected_error_omits_the_sample_and_degrades(
    fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector]
) -> None:
    _, state = fake_nvml
    state.write([{**GPU0, "error.nvmlDeviceGetTemperature": UNKNOWN}, GPU1])
    collector = make_collector()

    families = collector.collect()

    assert ("swarm_gpu_temperature_celsius", frozenset(gpu_labels(0, GPU0).items())) \
        not in sample_map(families)
    assert value(families, "swarm_gpu_temperature_celsius", gpu="1") == 80.0
    assert value(families, "swarm_gpu_power_watts", gpu="0") == 312.345
    status = collector.status()
    assert status.state == "degraded"
    assert "GPU 0" in status.message
    assert "temp" in status.message
    assert "Unknown Error" in status.message

    # A transient error is not remembered as "unsupported": the next read answers.
    state.remove_gpu_key(0, "error.nvmlDeviceGetTemperature")
    families = collector.collect()
    assert value(families, "swarm_gpu_temperature_celsius", gpu="0") == 61.0
    assert collector.status().state == "ok"


def test_gpu_lost_mid_run_and_back(fake_nvml: FakeNvml,
                                   make_collector: Callable[..., GpuCollector]) -> None:
    _, state = fake_nvml
    state.write([GPU0, GPU1])
    collector = make_collector()
    before = collector.collect()
    gpu0_before = gpu_samples(before, 0)

    state.update_gpu(1, lost=True)
    families = collector.collect()  # must not raise

    labels1 = gpu_labels(1, GPU1)  # cached from the first collect
    assert gpu_samples(families, 1) == {("swarm_gpu_lost", frozenset(labels1.items())): 1.0}
    assert gpu_samples(families, 0) == gpu0_before
    assert value(families, "swarm_gpus") == 2.0
    assert value(families, "swarm_gpu_nvml_available") == 1.0
    status = collector.status()
    assert status.state == "degraded"
    assert "GPU 1" in status.message
    assert str(GPU1["uuid"]) in status.message
    assert str(GPU1["pci_bus_id"]) in status.message
    assert "lost" in status.message
    assert "GPU 0" not in status.message

    state.update_gpu(1, lost=False)
    families = collector.collect()
    assert gpu_samples(families, 1) == expand(GPU1_EXPECTED, labels1)
    assert value(families, "swarm_gpu_lost", gpu="1") == 0.0
    assert collector.status().state == "ok"


def test_gpu_lost_before_the_first_collect(
    fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector]
) -> None:
    """No labels could be cached: the GPU is named by its index."""
    _, state = fake_nvml
    state.write([GPU0, {**GPU1, "lost": True}])
    collector = make_collector()

    families = collector.collect()

    assert gpu_samples(families, 1) == {
        ("swarm_gpu_lost", frozenset({"gpu": "1", "uuid": "", "pci_bus_id": "",
                                      "name": ""}.items())): 1.0
    }
    assert gpu_samples(families, 0) == expand(GPU0_EXPECTED, gpu_labels(0, GPU0))
    assert collector.status().state == "degraded"
    assert "GPU 1" in collector.status().message

    state.update_gpu(1, lost=False)
    families = collector.collect()
    assert gpu_samples(families, 1) == expand(GPU1_EXPECTED, gpu_labels(1, GPU1))


def test_driver_not_loaded_then_retried(fake_nvml: FakeNvml,
                                        make_collector: Callable[..., GpuCollector]) -> None:
    library, state = fake_nvml
    state.write([GPU0], init_error=DRIVER_NOT_LOADED)
    clock = FakeClock()
    collector = make_collector(clock)
    reset_call_counts(library)

    families = collector.collect()

    assert sample_map(families) == {("swarm_gpu_nvml_available", frozenset()): 0.0}
    status = collector.status()
    assert status.state == "unavailable"
    assert status.message == "NVML init failed: Driver Not Loaded"

    # The driver comes up; nvmlInit is retried only after INIT_RETRY_SECONDS.
    state.update_node(init_error=0)
    clock.advance(INIT_RETRY_SECONDS / 2)
    assert value(collector.collect(), "swarm_gpu_nvml_available") == 0.0
    assert call_count(library, "nvmlInitWithFlags") == 1
    clock.advance(INIT_RETRY_SECONDS / 2)
    families = collector.collect()
    assert value(families, "swarm_gpu_nvml_available") == 1.0
    assert value(families, "swarm_gpu_temperature_celsius", gpu="0") == 61.0
    assert collector.status().state == "ok"
    assert call_count(library, "nvmlInitWithFlags") == 2


def test_no_gpu(fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector]) -> None:
    _, state = fake_nvml
    state.write([], device_count=0)
    collector = make_collector()

    families = collector.collect()

    assert value(families, "swarm_gpus") == 0.0
    assert value(families, "swarm_gpu_nvml_available") == 1.0
    assert value(families, "swarm_gpu_driver_info", driver_version="550.54.15") == 1.0
    assert names(families) == {"swarm_gpus", "swarm_gpu_nvml_available",
                               "swarm_gpu_driver_info"}
    assert collector.status().state == "unavailable"
    assert collector.status().message == "NVML loaded but no GPU found"


def test_driver_failing_mid_run_is_reinitialised(
    fake_nvml: FakeNvml, make_collector: Callable[..., GpuCollector]
) -> None:
    library, state = fake_nvml
    state.write([GPU0])
    clock = FakeClock()
    collector = make_collector(clock)
    collector.collect()
    refs = init_refcount(library)

    state.update_node(**{"error.nvmlDeviceGetCount_v2": UNKNOWN})
    families = collector.collect()
    assert sample_map(families) == {("swarm_gpu_nvml_available", frozenset()): 0.0}
    assert collector.status().state == "unavailable"
    assert "NVML query failed" in collector.status().message
    assert init_refcount(library) == refs - 1  # it shut its session down

    state.update_node(**{"error.nvmlDeviceGetCount_v2": 0})
    clock.advance(INIT_RETRY_SECONDS)
    families = collector.collect()
    assert value(families, "swarm_gpu_utilization_ratio", gpu="0") == 0.55
    assert init_refcount(library) == refs


def test_close_shuts_nvml_down(fake_nvml: FakeNvml,
                               make_collector: Callable[..., GpuCollector]) -> None:
    library, state = fake_nvml
    state.write([GPU0])
    collector = make_collector()
    before = init_refcount(library)
    collector.collect()
    assert init_refcount(library) == before + 1
    collector.close()
    assert init_refcount(library) == before
    collector.close()  # twice is harmless
    assert init_refcount(library) == before


NO_LIBRARY_SCRIPT = r"""
import ctypes, json, sys
from swarm_maint.config import MonitoringConfig
from swarm_maint.monitoring.collector import CollectorContext
from swarm_maint.monitoring.collectors.gpu import create

collector = create(CollectorContext(config=MonitoringConfig(nvml_library=sys.argv[1])))
families = collector.collect()
status = collector.status()
collector.close()
try:
    ctypes.CDLL("libnvidia-ml.so.1")
    real_nvml = True
except OSError:
    real_nvml = False
print(json.dumps({
    "samples": [[s.name, s.labels, s.value] for f in families for s in f.samples],
    "state": status.state,
    "message": status.message,
    "real_nvml": real_nvml,
}))
"""


def run_without_fake(library: str, tmp_path: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "FAKE_NVML_STATE"}
    proc = subprocess.run(
        [sys.executable, "-c", NO_LIBRARY_SCRIPT, library],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_configured_library_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "libnvidia-ml.so.1"
    result = run_without_fake(str(missing), tmp_path)
    assert result["samples"] == [["swarm_gpu_nvml_available", {}, 0.0]]
    assert result["state"] == "unavailable"
    assert result["message"] == f"no NVIDIA driver: {missing} not found"


def test_configured_library_not_loadable(tmp_path: Path) -> None:
    broken = tmp_path / "libnvidia-ml.so.1"
    broken.write_text("not an ELF file")
    result = run_without_fake(str(broken), tmp_path)
    assert result["samples"] == [["swarm_gpu_nvml_available", {}, 0.0]]
    assert result["state"] == "unavailable"
    assert str(result["message"]).startswith(f"no NVIDIA driver: {broken} cannot be loaded: ")


def test_default_search_without_nvml(tmp_path: Path) -> None:
    result = run_without_fake("", tmp_path)
    if result["real_nvml"]:
        pytest.skip("this machine has a real libnvidia-ml.so.1")
    assert result["samples"] == [["swarm_gpu_nvml_available", {}, 0.0]]
    assert result["state"] == "unavailable"
    assert result["message"] == "no NVIDIA driver: libnvidia-ml.so.1 not found"
