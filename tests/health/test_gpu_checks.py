"""GPU checks through the real metrics path: fake NVML state -> GPU collector (real pynvml)
-> MetricsHub.collect_once() -> FrameSamples(hub.latest()) -> checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm_maint.config import HealthConfig, MonitoringConfig, ThresholdsConfig
from swarm_maint.health.check import CheckResult, FrameSamples, HealthCheck, HealthContext
from swarm_maint.health.checks.gpu import create, kernel_module_version
from swarm_maint.monitoring.collector import CollectorContext
from swarm_maint.monitoring.collectors.gpu import GpuCollector
from swarm_maint.monitoring.hub import MetricsHub
from tests.fake_clock import FakeClock
from tests.fake_nvml import FakeNvmlState

FakeNvml = tuple[Path, FakeNvmlState]

HEALTHY: dict[str, object] = {
    "name": "NVIDIA H100 80GB HBM3",
    "pci_bus_id": "00000000:17:00.0",
    "util_gpu": 0,
    "temp": 45,
    "clocks_event_reasons": 0x1,  # gpu_idle: not a problem
    "pcie_gen_current": 5, "pcie_gen_max": 5,
    "pcie_width_current": 16, "pcie_width_max": 16,
}
SECOND: dict[str, object] = {**HEALTHY, "pci_bus_id": "00000000:3B:00.0"}

MODULE_550 = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 "
              "22:23:56 UTC 2024\n"
              "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n")
MODULE_535_OPEN = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.104.05  "
                   "Release Build  (dvs-builder@U16-I3-B03-4-3)  Sat Aug 19 01:13:02 UTC 2023\n"
                   "GCC version:  gcc version 11.4.0 (Ubuntu 11.4.0-1ubuntu1~22.04)\n")


class Env:
    """One fake node: its NVML state, proc root, hub and checks."""

    def __init__(self, fake_nvml: FakeNvml, tmp_path: Path, **health: Any) -> None:
        library, self.state = fake_nvml
        self.clock = FakeClock()
        self.proc = tmp_path / "proc"
        self.proc.mkdir(parents=True)
        collector = GpuCollector(CollectorContext(
            config=MonitoringConfig(nvml_library=str(library)), clock=self.clock))
        self.hub = MetricsHub([collector], 1.0, "node", clock=self.clock)
        ctx = HealthContext(config=HealthConfig(**health),
                            frame=lambda: FrameSamples(self.hub.latest()),
                            proc_root=self.proc, clock=self.clock)
        self.checks: dict[str, HealthCheck] = {c.name: c for c in create(ctx)}

    def module(self, text: str) -> None:
        d = self.proc / "driver" / "nvidia"
        d.mkdir(parents=True, exist_ok=True)
        (d / "version").write_text(text)

    def run(self, name: str, collect: bool = True) -> CheckResult:
        if collect:
            self.hub.collect_once()
        return self.checks[name].run()


@pytest.fixture
def make_env(fake_nvml: FakeNvml, tmp_path: Path) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def make(**health: Any) -> Env:
        env = Env(fake_nvml, tmp_path / f"node{len(made)}", **health)
        made.append(env)
        return env

    yield make
    for env in made:
        env.hub.close()


def test_all_checks_ok_on_healthy_gpus(make_env: Callable[..., Env]) -> None:
    env = make_env(expected_gpus=2)
    env.state.write([HEALTHY, SECOND])
    env.module(MODULE_550)
    names = sorted(env.checks)
    assert names == ["gpu_count", "gpu_driver", "gpu_lost", "gpu_memory", "gpu_pcie",
                     "gpu_thermal"]
    env.hub.collect_once()
    for name in names:
        r = env.checks[name].run()
        assert (r.status, r.action) == ("OK", None), (name, r.message)
        assert env.checks[name].level == 1
        assert env.checks[name].interval == 30.0


# -- gpu_memory -------------------------------------------------------------------------

def test_row_remap_pending_is_a_warning_naming_the_gpu(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([HEALTHY, {**SECOND, "remapped_pending": 1, "remapped_correctable": 2}])
    r = env.run("gpu_memory")
    assert (r.status, r.action) == ("WARNING", "reset_gpu")
    assert r.message == "GPU 1 (00000000:3B:00.0): row remap pending: reset the GPU when idle"


def test_row_remap_failure_is_critical_replace_hardware(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([{**HEALTHY, "remapped_failed": 1, "remapped_pending": 1}])
    r = env.run("gpu_memory")
    assert (r.status, r.action) == ("CRITICAL", "replace_hardware")
    assert "GPU 0 (00000000:17:00.0): row remapping failed" in r.message


def test_uncorrected_ecc_is_critical(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([{**HEALTHY, "ecc_uncorrected_volatile": 3,
                      "ecc_uncorrected_aggregate": 5}])
    r = env.run("gpu_memory")
    assert (r.status, r.action) == ("CRITICAL", "reset_gpu")
    assert "GPU 0 (00000000:17:00.0): 3 uncorrectable ECC error(s)" in r.message


def test_retired_pages_and_corrected_ecc(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([{**HEALTHY, "retired_sbe": 30, "retired_dbe": 2,
                      "ecc_corrected_volatile": 1500}])
    r = env.run("gpu_memory")
    assert (r.status, r.action) == ("WARNING", "investigate")
    assert "32 retired pages" in r.message and "1500 corrected ECC errors" in r.message
    env.state.update_gpu(0, retired_sbe=58, retired_pending=1)
    r = env.run("gpu_memory")
    assert (r.status, r.action) == ("CRITICAL", "replace_hardware")
    assert "60 retired pages" in r.message
    assert r.details["0"]["retired_pending"] == 1.0


# -- gpu_lost / gpu_count ---------------------------------------------------------------

def test_lost_gpu_is_critical_reboot(make_env: Callable[..., Env]) -> None:
    env = make_env(expected_gpus=2)
    env.state.write([HEALTHY, SECOND])
    assert env.run("gpu_lost").status == "OK"
    env.state.update_gpu(1, lost=True)
    r = env.run("gpu_lost")
    assert (r.status, r.action) == ("CRITICAL", "reboot")
    assert r.message == ("GPU 1 (00000000:3B:00.0) is lost (fell off the bus): "
                         "reboot the node")
    # a lost GPU's other checks do not invent findings from missing readings
    for name in ("gpu_memory", "gpu_thermal", "gpu_pcie"):
        assert env.run(name, collect=False).status == "OK", name


def test_fewer_gpus_than_expected_is_critical(make_env: Callable[..., Env]) -> None:
    env = make_env(expected_gpus=2)
    env.state.write([HEALTHY])
    r = env.run("gpu_count")
    assert (r.status, r.action) == ("CRITICAL", "reboot")
    assert "only 1 of 2 expected GPUs visible" in r.message


def test_no_nvml_and_nothing_expected_is_ok(make_env: Callable[..., Env]) -> None:
    env = make_env(expected_gpus=0)
    env.state.write([], init_error=9)  # NVML_ERROR_DRIVER_NOT_LOADED
    r = env.run("gpu_count")
    assert (r.status, r.message) == ("OK", "no GPU expected")
    assert env.run("gpu_driver", collect=False).message == "no NVIDIA driver"
    for name in ("gpu_lost", "gpu_memory", "gpu_thermal", "gpu_pcie"):
        assert env.run(name, collect=False).status == "OK"


def test_no_nvml_but_gpus_expected_is_critical(make_env: Callable[..., Env]) -> None:
    env = make_env(expected_gpus=8)
    env.state.write([], init_error=9)
    r = env.run("gpu_count")
    assert r.status == "CRITICAL"
    assert r.message.startswith("NVML not available: NVML init failed")


# -- gpu_thermal ------------------------------------------------------------------------

def test_thermal_throttle_bits_warn(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([HEALTHY, {**SECOND, "clocks_event_reasons": 0x40 | 0x4}])  # hw thermal
    r = env.run("gpu_thermal")
    assert (r.status, r.action) == ("WARNING", "investigate")
    assert r.message == ("GPU 1 (00000000:3B:00.0): hardware thermal slowdown active: "
                         "check cooling")
    env.state.update_gpu(1, clocks_event_reasons=0x80)
    r = env.run("gpu_thermal")
    assert r.status == "WARNING" and "power brake" in r.message


def test_temperature_thresholds(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([{**HEALTHY, "temp": 87}])
    r = env.run("gpu_thermal")
    assert (r.status, r.action) == ("WARNING", "investigate")
    env.state.update_gpu(0, temp=95)
    r = env.run("gpu_thermal")
    assert (r.status, r.action) == ("CRITICAL", "drain_node")
    assert r.message.startswith("GPU 0 (00000000:17:00.0): 95 °C (critical at 92 °C)")


# -- gpu_pcie ---------------------------------------------------------------------------

def test_pcie_width_below_max_warns(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([{**HEALTHY, "pcie_width_current": 8}])
    r = env.run("gpu_pcie")
    assert (r.status, r.action) == ("WARNING", "investigate")
    assert "GPU 0 (00000000:17:00.0): PCIe link x8 of x16" in r.message


def test_pcie_generation_below_max_only_matters_under_load(
    make_env: Callable[..., Env]
) -> None:
    env = make_env()
    env.state.write([{**HEALTHY, "pcie_gen_current": 1, "util_gpu": 0}])
    assert env.run("gpu_pcie").status == "OK"  # idle GPUs drop to Gen1 to save power
    env.state.update_gpu(0, util_gpu=80)
    r = env.run("gpu_pcie")
    assert r.status == "WARNING" and "Gen1 of Gen5 under load" in r.message


def test_pcie_replay_rate(make_env: Callable[..., Env]) -> None:
    env = make_env(thresholds=ThresholdsConfig(pcie_replays_per_hour_warning=100))
    env.state.write([{**HEALTHY, "pcie_replay": 1000}])
    assert env.run("gpu_pcie").status == "OK"  # a first reading is only a baseline
    env.clock.advance(600)
    env.state.update_gpu(0, pcie_replay=1010)  # 60 per hour
    assert env.run("gpu_pcie").status == "OK"
    env.clock.advance(600)
    env.state.update_gpu(0, pcie_replay=1500)  # 490 in 10 min since the one before
    r = env.run("gpu_pcie")
    assert (r.status, r.action) == ("WARNING", "investigate")
    assert "PCIe replays per hour" in r.message
    assert r.details["0"]["replays_per_hour"] == pytest.approx(500 * 3600 / 1200)


def test_pcie_replay_counter_reset_is_not_a_burst(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([{**HEALTHY, "pcie_replay": 5000}])
    env.run("gpu_pcie")
    env.clock.advance(600)
    env.state.update_gpu(0, pcie_replay=3)  # driver reloaded
    assert env.run("gpu_pcie").status == "OK"


# -- gpu_driver -------------------------------------------------------------------------

def test_driver_mismatch_is_critical_reboot(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([HEALTHY], driver_version="550.54.15")
    env.module(MODULE_535_OPEN)
    r = env.run("gpu_driver")
    assert (r.status, r.action) == ("CRITICAL", "reboot")
    assert "driver/library version mismatch" in r.message
    assert "535.104.05" in r.message and "550.54.15" in r.message
    assert r.details == {"kernel_module": "535.104.05", "library": "550.54.15"}


def test_driver_versions_agree(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([HEALTHY], driver_version="550.54.15")
    env.module(MODULE_550)
    r = env.run("gpu_driver")
    assert (r.status, r.action) == ("OK", None)
    assert r.message == "driver 550.54.15 (kernel module and library agree)"


def test_nvml_reporting_a_mismatch_is_critical(make_env: Callable[..., Env]) -> None:
    env = make_env()
    env.state.write([HEALTHY], init_error=18)  # NVML_ERROR_LIB_RM_VERSION_MISMATCH
    env.module(MODULE_550)
    r = env.run("gpu_driver")
    assert (r.status, r.action) == ("CRITICAL", "reboot"), r.message


def test_kernel_module_version_parsing(tmp_path: Path) -> None:
    assert kernel_module_version(tmp_path) is None
    d = tmp_path / "driver" / "nvidia"
    d.mkdir(parents=True)
    (d / "version").write_text(MODULE_550)
    assert kernel_module_version(tmp_path) == "550.54.15"
    (d / "version").write_text(MODULE_535_OPEN)
    assert kernel_module_version(tmp_path) == "535.104.05"
