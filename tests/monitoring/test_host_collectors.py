"""Host collectors (cpu, memory, pressure, network, disk, filesystem, process).

Each reads a fake proc/sys tree under tests/fixtures (copied to tmp_path when a test
rewrites a file to make a second snapshot) and is checked against values worked out
by hand from those files; one test per collector also runs it on this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.core import Metric

from swarm_maint.clock import SystemClock
from swarm_maint.config import (
    DiskConfig,
    FilesystemConfig,
    MonitoringConfig,
    NetworkConfig,
)
from swarm_maint.monitoring.collector import Collector, CollectorContext
from swarm_maint.monitoring.collectors import (
    cpu,
    disk,
    filesystem,
    memory,
    network,
    pressure,
    process,
)
from swarm_maint.monitoring.collectors._procfs import DeltaTracker
from tests.metric_samples import names, sample_map, value

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIX_PROC = FIXTURES / "proc"
FIX_SYS = FIXTURES / "sys"
TICK = os.sysconf("SC_CLK_TCK")
KIB = 1024


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 5000.0) -> None:
        self.now = start

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_ctx(
    proc: Path = FIX_PROC,
    sys: Path = FIX_SYS,
    clock: FakeClock | None = None,
    **config: object,
) -> CollectorContext:
    cfg = MonitoringConfig(proc_root=str(proc), sys_root=str(sys), **config)  # type: ignore[arg-type]
    return CollectorContext(config=cfg, clock=clock or FakeClock())


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    """A writable copy of the fixture proc tree."""
    return Path(shutil.copytree(FIX_PROC, tmp_path / "proc"))


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A writable copy of the fixture sys tree."""
    return Path(shutil.copytree(FIX_SYS, tmp_path / "sys"))


def labelled(families: list[Metric], name: str, label: str) -> dict[str, float]:
    """{value of ``label``: sample value} for every sample called ``name``."""
    return {
        s.labels[label]: s.value for fam in families for s in fam.samples if s.name == name
    }


def check_help(families: list[Metric]) -> None:
    for fam in families:
        assert fam.documentation.strip(), f"{fam.name} has no HELP"
        assert "\n" not in fam.documentation


# --------------------------------------------------------------------------- _procfs


def test_delta_tracker_rates_resets_and_forgets_vanished_keys() -> None:
    t: DeltaTracker[str] = DeltaTracker()
    assert t.rate("a", 100, 10.0) is None  # first sight
    t.commit()
    assert t.rate("a", 300, 12.0) == 100.0
    assert t.rate("b", 5, 12.0) is None
    t.commit()
    assert t.rate("a", 50, 13.0) is None  # went backwards: reset
    t.commit()
    assert t.rate("a", 80, 14.0) == 30.0  # the reset value is the new baseline
    t.commit()  # "b" was not seen in this round
    t.commit()
    assert t.rate("b", 10, 20.0) is None
    assert t.delta("a", 90, 20.0) is None  # "a" vanished for a round too


# --------------------------------------------------------------------------- cpu

STAT_NEXT = (
    "cpu  22210 300 5520 159150 1220 0 500 0 0 0\n"
    "cpu0 10060 200 3020 80100 520 0 300 0 0 0\n"
    "cpu1 12150 100 2500 79050 700 0 200 0 0 0\n"
)


def _rewrite_cpu_lines(proc: Path, cpu_lines: str) -> None:
    rest = (FIX_PROC / "stat").read_text().splitlines(keepends=True)[3:]
    (proc / "stat").write_text(cpu_lines + "".join(rest))


def test_cpu_counters_from_fixture() -> None:
    c = cpu.create(make_ctx())
    fams = c.collect()
    assert c.status().state == "ok"
    check_help(fams)
    expected = {
        "0": (10000, 200, 3000, 80000, 500, 0, 300, 0),
        "1": (12000, 100, 2500, 79000, 700, 0, 200, 0),
    }
    got = sample_map(fams)
    for core, ticks in expected.items():
        for mode, t in zip(cpu.MODES, ticks, strict=True):
            key = ("swarm_cpu_seconds_total", frozenset({("cpu", core), ("mode", mode)}))
            assert got[key] == pytest.approx(t / TICK)
    # the aggregate "cpu" line is not a core
    assert set(labelled(fams, "swarm_cpu_seconds_total", "cpu")) == {"0", "1"}
    assert value(fams, "swarm_cpus") == 2
    assert value(fams, "swarm_context_switches_total") == 98765432
    assert value(fams, "swarm_interrupts_total") == 4567890
    assert value(fams, "swarm_forks_total") == 123456
    assert value(fams, "swarm_procs_blocked") == 2
    # no utilization before there is an interval to measure
    assert "swarm_cpu_utilization_ratio" not in names(fams)
    assert "swarm_cpu_core_utilization_ratio" not in names(fams)


def test_cpu_utilization_between_two_snapshots(proc: Path) -> None:
    clock = FakeClock()
    c = cpu.create(make_ctx(proc, clock=clock))
    c.collect()
    _rewrite_cpu_lines(proc, STAT_NEXT)
    clock.advance(1.0)
    fams = c.collect()
    # node: 400 ticks elapsed, 150 idle + 20 iowait
    assert value(fams, "swarm_cpu_utilization_ratio") == pytest.approx(1 - 170 / 400)
    # cpu0: 200 ticks, 100 idle + 20 iowait; cpu1: 200 ticks, 50 idle
    assert labelled(fams, "swarm_cpu_core_utilization_ratio", "cpu") == pytest.approx(
        {"0": 0.4, "1": 0.75}
    )
    assert value(fams, "swarm_cpu_seconds_total", cpu="1", mode="user") == pytest.approx(
        12150 / TICK
    )


def test_cpu_counter_going_backwards_gives_no_utilization(proc: Path) -> None:
    clock = FakeClock()
    c = cpu.create(make_ctx(proc, clock=clock))
    c.collect()
    # cpu1 was offlined and onlined again: its counters restarted near zero
    _rewrite_cpu_lines(
        proc,
        "cpu  10210 300 3520 80150 520 0 300 0 0 0\n"
        "cpu0 10060 200 3020 80100 520 0 300 0 0 0\n"
        "cpu1 150 100 500 50 0 0 0 0 0 0\n",
    )
    clock.advance(1.0)
    fams = c.collect()
    assert labelled(fams, "swarm_cpu_core_utilization_ratio", "cpu") == pytest.approx({"0": 0.4})
    assert "swarm_cpu_utilization_ratio" not in names(fams)


def test_cpu_missing_stat_is_unavailable(tmp_path: Path) -> None:
    c = cpu.create(make_ctx(tmp_path))
    assert c.collect() == []
    st = c.status()
    assert st.state == "unavailable"
    assert str(tmp_path / "stat") in st.message


def test_cpu_on_this_machine() -> None:
    c = cpu.create(CollectorContext(MonitoringConfig(), SystemClock()))
    c.collect()
    time.sleep(0.05)
    fams = c.collect()
    assert c.status().state == "ok"
    assert value(fams, "swarm_cpus") == os.cpu_count()
    assert 0.0 <= value(fams, "swarm_cpu_utilization_ratio") <= 1.0
    assert value(fams, "swarm_cpu_seconds_total", cpu="0", mode="idle") > 0
    assert value(fams, "swarm_context_switches_total") > 0


# --------------------------------------------------------------------------- memory


def test_memory_from_fixture() -> None:
    c = memory.create(make_ctx())
    fams = c.collect()
    assert c.status().state == "ok"
    check_help(fams)
    assert sample_map(fams) == {
        (name, frozenset()): v
        for name, v in {
            "swarm_memory_total_bytes": 16384000 * KIB,
            "swarm_memory_available_bytes": 8192000 * KIB,
            "swarm_memory_free_bytes": 2048000 * KIB,
            "swarm_memory_buffers_bytes": 256000 * KIB,
            "swarm_memory_cached_bytes": 4096000 * KIB,
            "swarm_memory_used_bytes": (16384000 - 8192000) * KIB,
            "swarm_memory_used_ratio": 0.5,
            "swarm_swap_total_bytes": 4194304 * KIB,
            "swarm_swap_free_bytes": 3145728 * KIB,
            "swarm_swap_used_bytes": (4194304 - 3145728) * KIB,
            "swarm_swap_in_pages_total": 4321,
            "swarm_swap_out_pages_total": 8765,
            "swarm_oom_kills_total": 3,
            "swarm_memory_hardware_corrupted_bytes": 8 * KIB,
        }.items()
    }


def test_memory_optional_fields_absent(proc: Path) -> None:
    vm = [ln for ln in (proc / "vmstat").read_text().splitlines() if "oom_kill" not in ln]
    (proc / "vmstat").write_text("\n".join(vm) + "\n")
    mi = [ln for ln in (proc / "meminfo").read_text().splitlines() if "Corrupted" not in ln]
    (proc / "meminfo").write_text("\n".join(mi) + "\n")
    c = memory.create(make_ctx(proc))
    got = names(c.collect())
    assert c.status().state == "ok"
    assert "swarm_oom_kills_total" not in got
    assert "swarm_memory_hardware_corrupted_bytes" not in got
    assert "swarm_swap_in_pages_total" in got


def test_memory_missing_vmstat_is_degraded_and_keeps_meminfo(proc: Path) -> None:
    (proc / "vmstat").unlink()
    c = memory.create(make_ctx(proc))
    fams = c.collect()
    st = c.status()
    assert st.state == "degraded"
    assert str(proc / "vmstat") in st.message
    assert value(fams, "swarm_memory_total_bytes") == 16384000 * KIB
    assert "swarm_swap_in_pages_total" not in names(fams)


def test_memory_missing_everything_is_unavailable(tmp_path: Path) -> None:
    c = memory.create(make_ctx(tmp_path))
    assert c.collect() == []
    st = c.status()
    assert st.state == "unavailable"
    assert str(tmp_path / "meminfo") in st.message


def test_memory_on_this_machine() -> None:
    c = memory.create(CollectorContext(MonitoringConfig(), SystemClock()))
    fams = c.collect()
    assert c.status().state == "ok"
    total = value(fams, "swarm_memory_total_bytes")
    assert total > 0
    assert 0 < value(fams, "swarm_memory_available_bytes") <= total
    assert 0.0 <= value(fams, "swarm_memory_used_ratio") <= 1.0


# --------------------------------------------------------------------------- pressure


def test_pressure_from_fixture() -> None:
    c = pressure.create(make_ctx())
    fams = c.collect()
    assert c.status().state == "ok"
    check_help(fams)
    assert labelled(fams, "swarm_pressure_waiting_seconds_total", "resource") == pytest.approx(
        {"cpu": 123.456789, "memory": 4.694369, "io": 98.765432}
    )
    # the cpu file has no "full" line
    assert labelled(fams, "swarm_pressure_stalled_seconds_total", "resource") == pytest.approx(
        {"memory": 2.305314, "io": 87.654321}
    )
    assert labelled(fams, "swarm_pressure_some_avg10_ratio", "resource") == pytest.approx(
        {"cpu": 0.025, "memory": 0.004, "io": 0.12}
    )


def test_pressure_without_psi_is_unavailable(tmp_path: Path) -> None:
    c = pressure.create(make_ctx(tmp_path))
    assert c.collect() == []
    st = c.status()
    assert st.state == "unavailable"
    assert st.message == "kernel has no pressure stall information (PSI)"


def test_pressure_one_file_missing_is_degraded(proc: Path) -> None:
    (proc / "pressure" / "io").unlink()
    c = pressure.create(make_ctx(proc))
    fams = c.collect()
    st = c.status()
    assert st.state == "degraded"
    assert str(proc / "pressure" / "io") in st.message
    assert set(labelled(fams, "swarm_pressure_waiting_seconds_total", "resource")) == {
        "cpu",
        "memory",
    }


def test_pressure_on_this_machine() -> None:
    c = pressure.create(CollectorContext(MonitoringConfig(), SystemClock()))
    fams = c.collect()
    try:
        for r in pressure.RESOURCES:
            Path("/proc/pressure", r).read_text()
    except OSError:
        assert fams == []
        assert c.status().state == "unavailable"
        return
    assert c.status().state == "ok"
    waiting = labelled(fams, "swarm_pressure_waiting_seconds_total", "resource")
    assert set(waiting) == {"cpu", "memory", "io"}
    assert all(v >= 0 for v in waiting.values())
    avg = labelled(fams, "swarm_pressure_some_avg10_ratio", "resource")
    assert all(0.0 <= v <= 1.0 for v in avg.values())


# --------------------------------------------------------------------------- network


def _write_net_dev(proc: Path, eth0: tuple[int, int], lo: tuple[int, int]) -> None:
    """net/dev with the given (rx bytes, tx bytes) for eth0 and lo."""
    lines = (FIX_PROC / "net" / "dev").read_text().splitlines()
    out = lines[:2]
    for line in lines[2:]:
        dev, _, rest = line.partition(":")
        f = rest.split()
        rx_tx = {"eth0": eth0, "lo": lo}.get(dev.strip())
        if rx_tx is not None:
            f[0], f[8] = str(rx_tx[0]), str(rx_tx[1])
        out.append(f"{dev}: " + " ".join(f))
    (proc / "net" / "dev").write_text("\n".join(out) + "\n")


def test_network_counters_state_and_speed_from_fixture() -> None:
    c = network.create(make_ctx())
    fams = c.collect()
    assert c.status().state == "ok"
    check_help(fams)
    expected_eth0 = {
        "swarm_network_receive_bytes_total": 9876543210,
        "swarm_network_receive_packets_total": 12345678,
        "swarm_network_receive_errors_total": 3,
        "swarm_network_receive_drop_total": 7,
        "swarm_network_transmit_bytes_total": 1234567890,
        "swarm_network_transmit_packets_total": 2345678,
        "swarm_network_transmit_errors_total": 1,
        "swarm_network_transmit_drop_total": 2,
    }
    for name, v in expected_eth0.items():
        assert value(fams, name, device="eth0") == v, name
    # veth123 is excluded by the default exclude_devices
    assert set(labelled(fams, "swarm_network_receive_bytes_total", "device")) == {"lo", "eth0"}
    assert value(fams, "swarm_network_transmit_packets_total", device="lo") == 1000
    # "up" for eth0, "unknown" counts as up for lo
    assert labelled(fams, "swarm_network_up", "device") == {"eth0": 1.0, "lo": 1.0}
    # 25000 Mbit/s; lo has no speed file
    assert labelled(fams, "swarm_network_speed_bytes", "device") == {"eth0": 25000 * 125000}
    assert "swarm_network_receive_bytes_per_second" not in names(fams)
    assert "swarm_network_transmit_bytes_per_second" not in names(fams)


def test_network_throughput_and_counter_reset(proc: Path) -> None:
    clock = FakeClock()
    c = network.create(make_ctx(proc, clock=clock))
    c.collect()

    _write_net_dev(
        proc, eth0=(9876543210 + 20_000_000, 1234567890 + 4_000_000), lo=(123456, 123456)
    )
    clock.advance(2.0)
    fams = c.collect()
    assert labelled(fams, "swarm_network_receive_bytes_per_second", "device") == {
        "eth0": 10_000_000.0,
        "lo": 0.0,
    }
    assert labelled(fams, "swarm_network_transmit_bytes_per_second", "device") == {
        "eth0": 2_000_000.0,
        "lo": 0.0,
    }

    # the driver was reloaded: eth0's receive counter restarted
    _write_net_dev(proc, eth0=(1000, 1234567890 + 5_000_000), lo=(124456, 123456))
    clock.advance(1.0)
    fams = c.collect()
    assert labelled(fams, "swarm_network_receive_bytes_per_second", "device") == {"lo": 1000.0}
    assert value(fams, "swarm_network_transmit_bytes_per_second", device="eth0") == 1_000_000.0
    assert value(fams, "swarm_network_receive_bytes_total", device="eth0") == 1000

    # from the new baseline the rate is back
    _write_net_dev(proc, eth0=(5000, 1234567890 + 5_000_000), lo=(124456, 123456))
    clock.advance(4.0)
    fams = c.collect()
    assert value(fams, "swarm_network_receive_bytes_per_second", device="eth0") == 1000.0


def test_network_sysfs_variants(sysfs: Path) -> None:
    eth0 = sysfs / "class" / "net" / "eth0"
    (eth0 / "operstate").write_text("down\n")
    (eth0 / "speed").write_text("-1\n")  # what a down link reports
    shutil.rmtree(sysfs / "class" / "net" / "lo")  # no sysfs entry at all
    c = network.create(make_ctx(FIX_PROC, sysfs))
    fams = c.collect()
    assert c.status().state == "ok"
    assert labelled(fams, "swarm_network_up", "device") == {"eth0": 0.0}
    assert "swarm_network_speed_bytes" not in names(fams)

    # "unknown" only means up for the loopback device
    (eth0 / "operstate").write_text("unknown\n")
    # a driver without a speed answers EINVAL; an unreadable file is the same to us
    (eth0 / "speed").unlink()
    (eth0 / "speed").mkdir()
    fams = c.collect()
    assert labelled(fams, "swarm_network_up", "device") == {"eth0": 0.0}
    assert "swarm_network_speed_bytes" not in names(fams)

    (eth0 / "operstate").write_text("up\n")
    (eth0 / "speed").rmdir()
    (eth0 / "speed").write_text("100000\n")
    fams = c.collect()
    assert labelled(fams, "swarm_network_up", "device") == {"eth0": 1.0}
    assert value(fams, "swarm_network_speed_bytes", device="eth0") == 100000 * 125000


def test_network_exclude_devices_from_config() -> None:
    c = network.create(make_ctx(network=NetworkConfig(exclude_devices="^(lo|eth)")))
    fams = c.collect()
    assert set(labelled(fams, "swarm_network_receive_bytes_total", "device")) == {"veth123"}
    assert value(fams, "swarm_network_receive_bytes_total", device="veth123") == 555555


def test_network_missing_net_dev_is_unavailable(tmp_path: Path) -> None:
    c = network.create(make_ctx(tmp_path))
    assert c.collect() == []
    st = c.status()
    assert st.state == "unavailable"
    assert str(tmp_path / "net" / "dev") in st.message


def test_network_on_this_machine() -> None:
    c = network.create(CollectorContext(MonitoringConfig(), SystemClock()))
    c.collect()
    time.sleep(0.05)
    fams = c.collect()
    assert c.status().state == "ok"
    assert value(fams, "swarm_network_receive_bytes_total", device="lo") >= 0
    assert value(fams, "swarm_network_receive_bytes_per_second", device="lo") >= 0
    if Path("/sys/class/net/lo").is_dir():
        assert value(fams, "swarm_network_up", device="lo") == 1.0


# --------------------------------------------------------------------------- disk


def _rewrite_diskstats(proc: Path, changes: dict[str, dict[int, int]]) -> None:
    """Add ``changes[device][column]`` to the fixture's diskstats columns."""
    out = []
    for line in (FIX_PROC / "diskstats").read_text().splitlines():
        f = line.split()
        for col, delta in changes.get(f[2], {}).items():
            f[col] = str(int(f[col]) + delta)
        out.append(" ".join(f))
    (proc / "diskstats").write_text("\n".join(out) + "\n")


def test_disk_counters_from_fixture() -> None:
    c = disk.create(make_ctx())
    fams = c.collect()
    assert c.status().state == "ok"
    check_help(fams)
    # partitions and loop devices are excluded by default
    assert set(labelled(fams, "swarm_disk_reads_completed_total", "device")) == {"sda", "nvme0n1"}
    sda = {
        "swarm_disk_reads_completed_total": 120000,
        "swarm_disk_read_bytes_total": 9600000 * 512,
        "swarm_disk_read_time_seconds_total": 45.0,
        "swarm_disk_writes_completed_total": 80000,
        "swarm_disk_written_bytes_total": 6400000 * 512,
        "swarm_disk_write_time_seconds_total": 90.0,
        "swarm_disk_io_time_seconds_total": 150.0,
        "swarm_disk_io_now": 2,
    }
    for name, v in sda.items():
        assert value(fams, name, device="sda") == pytest.approx(v), name
    assert value(fams, "swarm_disk_io_now", device="nvme0n1") == 5
    for name in (
        "swarm_disk_read_bytes_per_second",
        "swarm_disk_write_bytes_per_second",
        "swarm_disk_utilization_ratio",
    ):
        assert name not in names(fams)


def test_disk_rates_utilization_cap_and_reset(proc: Path) -> None:
    clock = FakeClock()
    c = disk.create(make_ctx(proc, clock=clock))
    c.collect()
    _rewrite_diskstats(
        proc,
        {
            "sda": {5: 20000, 9: 40000, 12: 1000},  # sectors read/written, io ms
            "nvme0n1": {12: 5000},  # more busy time than wall time (merged accounting)
        },
    )
    clock.advance(2.0)
    fams = c.collect()
    assert labelled(fams, "swarm_disk_read_bytes_per_second", "device") == {
        "sda": 20000 * 512 / 2,
        "nvme0n1": 0.0,
    }
    assert value(fams, "swarm_disk_write_bytes_per_second", device="sda") == 40000 * 512 / 2
    assert labelled(fams, "swarm_disk_utilization_ratio", "device") == {
        "sda": 0.5,
        "nvme0n1": 1.0,
    }

    # sda's read counter went backwards (device re-attached): no read rate this time
    _rewrite_diskstats(proc, {"sda": {5: -100, 9: 80000, 12: 1500}, "nvme0n1": {12: 5000}})
    clock.advance(1.0)
    fams = c.collect()
    assert labelled(fams, "swarm_disk_read_bytes_per_second", "device") == {"nvme0n1": 0.0}
    assert value(fams, "swarm_disk_write_bytes_per_second", device="sda") == 40000 * 512
    assert value(fams, "swarm_disk_utilization_ratio", device="sda") == 0.5


def test_disk_exclude_devices_from_config() -> None:
    c = disk.create(make_ctx(disk=DiskConfig(exclude_devices="^(sd|nvme)")))
    fams = c.collect()
    assert set(labelled(fams, "swarm_disk_reads_completed_total", "device")) == {"loop0"}


def test_disk_missing_diskstats_is_unavailable(tmp_path: Path) -> None:
    c = disk.create(make_ctx(tmp_path))
    assert c.collect() == []
    st = c.status()
    assert st.state == "unavailable"
    assert str(tmp_path / "diskstats") in st.message


def test_disk_on_this_machine() -> None:
    cfg = MonitoringConfig()
    c = disk.create(CollectorContext(cfg, SystemClock()))
    c.collect()
    time.sleep(0.05)
    fams = c.collect()
    assert c.status().state == "ok"
    exclude = re.compile(cfg.disk.exclude_devices)
    expected = {
        ln.split()[2]
        for ln in Path("/proc/diskstats").read_text().splitlines()
        if not exclude.match(ln.split()[2])
    }
    assert set(labelled(fams, "swarm_disk_reads_completed_total", "device")) == expected
    for v in labelled(fams, "swarm_disk_utilization_ratio", "device").values():
        assert 0.0 <= v <= 1.0


# --------------------------------------------------------------------------- filesystem

FIX_MOUNTPOINTS = {"/", "/run", "/data", "/mnt/my models", "/srv/archive", "/mnt/nfs"}


def _st(blocks: int, bfree: int, bavail: int, files: int, ffree: int, flag: int = 0) -> (
    os.statvfs_result
):
    return os.statvfs_result((4096, 4096, blocks, bfree, bavail, files, ffree, ffree, flag, 255))


class FakeStatvfs:
    """statvfs by table; one mount point can be made to block until released."""

    def __init__(self, table: dict[str, os.statvfs_result], block: str | None = None) -> None:
        self.table = table
        self.block = block
        self.release = threading.Event()
        self.calls: list[str] = []
        self.threads: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, path: str) -> os.statvfs_result:
        with self._lock:
            self.calls.append(path)
            self.threads[path] = threading.current_thread().name
        if path == self.block:
            self.release.wait(30)
        if path not in self.table:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.table[path]

    def count(self, path: str) -> int:
        with self._lock:
            return self.calls.count(path)


def _fix_table() -> dict[str, os.statvfs_result]:
    return {
        "/": _st(1000, 400, 300, 5000, 4000),
        "/run": _st(100, 90, 90, 800, 700),
        "/data": _st(2000, 1000, 900, 6000, 5000),
        "/mnt/my models": _st(3000, 100, 50, 7000, 6000, flag=os.ST_RDONLY),
        "/srv/archive": _st(500, 10, 10, 100, 50),
        "/mnt/nfs": _st(9000, 8000, 8000, 9000, 8000),
    }


def test_filesystem_mount_table_and_values() -> None:
    fake = FakeStatvfs(_fix_table())
    c = filesystem.FilesystemCollector(make_ctx(), statvfs=fake)
    try:
        fams = c.collect()
    finally:
        c.close()
    assert c.status().state == "ok"
    check_help(fams)
    sizes = labelled(fams, "swarm_filesystem_size_bytes", "mountpoint")
    assert set(sizes) == FIX_MOUNTPOINTS  # \040 decoded; sysfs/proc/devtmpfs/squashfs/overlay out
    assert sorted(fake.calls) == sorted(FIX_MOUNTPOINTS)  # excluded mounts are never statted
    # /data is mounted twice: the later (stacked, visible) mount wins
    assert value(fams, "swarm_filesystem_size_bytes", mountpoint="/data", device="/dev/sdc1",
                 fstype="xfs") == 2000 * 4096
    assert value(fams, "swarm_filesystem_size_bytes", mountpoint="/") == 1000 * 4096
    assert value(fams, "swarm_filesystem_free_bytes", mountpoint="/") == 400 * 4096
    assert value(fams, "swarm_filesystem_avail_bytes", mountpoint="/") == 300 * 4096
    assert value(fams, "swarm_filesystem_files", mountpoint="/") == 5000
    assert value(fams, "swarm_filesystem_files_free", mountpoint="/") == 4000
    s = next(s for f in fams for s in f.samples if s.labels.get("mountpoint") == "/mnt/nfs")
    assert s.labels == {
        "device": "nfs.example.com:/export",
        "mountpoint": "/mnt/nfs",
        "fstype": "nfs4",
    }
    # ro from the mount options (/srv/archive) or from statvfs's ST_RDONLY (/mnt/my models)
    assert labelled(fams, "swarm_filesystem_readonly", "mountpoint") == {
        "/": 0.0,
        "/run": 0.0,
        "/data": 0.0,
        "/mnt/my models": 1.0,
        "/srv/archive": 1.0,
        "/mnt/nfs": 0.0,
    }
    assert labelled(fams, "swarm_filesystem_stuck", "mountpoint") == dict.fromkeys(
        FIX_MOUNTPOINTS, 0.0
    )


def test_filesystem_exclude_config() -> None:
    fake = FakeStatvfs(_fix_table())
    cfg = FilesystemConfig(exclude_fstypes=["tmpfs", "nfs4"], exclude_mountpoints="^/(srv|mnt/my)")
    c = filesystem.FilesystemCollector(make_ctx(filesystem=cfg), statvfs=fake)
    fams = c.collect()
    c.close()
    assert set(labelled(fams, "swarm_filesystem_size_bytes", "mountpoint")) == {"/", "/data"}
    # the configured lists replace the defaults: /proc, /sys and /dev are asked now
    # (this fake has no answer for them, like a mount point that vanished: skipped quietly)
    assert {"/proc", "/sys", "/dev"} <= set(fake.calls)
    assert set(labelled(fams, "swarm_filesystem_stuck", "mountpoint")) == {"/", "/data"}
    assert c.status().state == "ok"


def test_filesystem_stuck_mount_does_not_hold_up_collection() -> None:
    timeout = 0.3
    fake = FakeStatvfs(_fix_table(), block="/mnt/nfs")
    ctx = make_ctx(filesystem=FilesystemConfig(statvfs_timeout=timeout))
    c = filesystem.FilesystemCollector(ctx, statvfs=fake)
    try:
        t0 = time.monotonic()
        fams = c.collect()
        elapsed = time.monotonic() - t0
        assert timeout * 0.9 <= elapsed < timeout + 1.0
        stuck = labelled(fams, "swarm_filesystem_stuck", "mountpoint")
        assert stuck == {**dict.fromkeys(FIX_MOUNTPOINTS, 0.0), "/mnt/nfs": 1.0}
        sizes = labelled(fams, "swarm_filesystem_size_bytes", "mountpoint")
        assert set(sizes) == FIX_MOUNTPOINTS - {"/mnt/nfs"}
        st = c.status()
        assert st.state == "degraded"
        assert "/mnt/nfs" in st.message

        # still blocked: not asked again, and the collection does not wait for it
        t0 = time.monotonic()
        fams = c.collect()
        assert time.monotonic() - t0 < timeout
        assert fake.count("/mnt/nfs") == 1
        assert fake.count("/") == 2
        assert value(fams, "swarm_filesystem_stuck", mountpoint="/mnt/nfs") == 1.0
        assert c.status().state == "degraded"

        # the server comes back: once the old call returns, the mount is asked again
        fake.release.set()
        deadline = time.monotonic() + 5
        while True:
            fams = c.collect()
            if value(fams, "swarm_filesystem_stuck", mountpoint="/mnt/nfs") == 0.0:
                break
            assert time.monotonic() < deadline, "stuck mount never recovered"
            time.sleep(0.01)
        assert value(fams, "swarm_filesystem_size_bytes", mountpoint="/mnt/nfs") == 9000 * 4096
        assert fake.count("/mnt/nfs") == 2
        assert c.status().state == "ok"
    finally:
        fake.release.set()
        c.close()


def test_filesystem_real_statvfs_on_temporary_mounts(tmp_path: Path) -> None:
    spaced = tmp_path / "with space"
    plain = tmp_path / "plain"
    spaced.mkdir()
    plain.mkdir()
    gone = tmp_path / "gone"  # unmounted after the table was read
    esc = str(spaced).replace(" ", "\\040")
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mounts").write_text(
        f"/dev/vdb1 {esc} ext4 rw,relatime 0 0\n"
        f"/dev/vdc1 {plain} xfs ro,relatime 0 0\n"
        f"/dev/vdd1 {gone} ext4 rw,relatime 0 0\n"
    )
    c = filesystem.create(make_ctx(proc))
    fams = c.collect()
    c.close()
    assert c.status().state == "ok"
    sizes = labelled(fams, "swarm_filesystem_size_bytes", "mountpoint")
    assert set(sizes) == {str(spaced), str(plain)}
    assert "gone" not in str(sample_map(fams))  # vanished: skipped without a sample
    real = os.statvfs(spaced)
    assert sizes[str(spaced)] == real.f_blocks * real.f_frsize
    assert value(fams, "swarm_filesystem_files", mountpoint=str(spaced)) == real.f_files
    assert value(fams, "swarm_filesystem_readonly", mountpoint=str(plain)) == 1.0
    assert value(fams, "swarm_filesystem_readonly", mountpoint=str(spaced)) == float(
        bool(real.f_flag & os.ST_RDONLY)
    )


def test_filesystem_missing_mounts_is_unavailable(tmp_path: Path) -> None:
    c = filesystem.create(make_ctx(tmp_path))
    assert c.collect() == []
    st = c.status()
    assert st.state == "unavailable"
    assert str(tmp_path / "self" / "mounts") in st.message
    c.close()


def test_filesystem_on_this_machine() -> None:
    c = filesystem.create(CollectorContext(MonitoringConfig(), SystemClock()))
    fams = c.collect()
    c.close()
    sizes = labelled(fams, "swarm_filesystem_size_bytes", "mountpoint")
    assert len(sizes) >= 1
    for mp, size in sizes.items():
        assert size >= value(fams, "swarm_filesystem_avail_bytes", mountpoint=mp) >= 0
    assert 1.0 not in labelled(fams, "swarm_filesystem_stuck", "mountpoint").values()


# --------------------------------------------------------------------------- process


def test_process_on_this_machine() -> None:
    c = process.create(CollectorContext(MonitoringConfig(), SystemClock()))
    # burn a little CPU so the user time is measurably positive
    deadline = time.process_time() + 0.02
    while time.process_time() < deadline:
        pass
    fams = c.collect()
    assert c.status().state == "ok"
    check_help(fams)
    assert value(fams, "swarm_agent_cpu_seconds_total", mode="user") > 0
    assert value(fams, "swarm_agent_cpu_seconds_total", mode="system") >= 0
    rss = value(fams, "swarm_agent_resident_memory_bytes")
    assert rss > 0
    assert value(fams, "swarm_agent_virtual_memory_bytes") >= rss
    # both counts include the descriptor of the /proc/self/fd listing itself
    assert value(fams, "swarm_agent_open_fds") == len(os.listdir("/proc/self/fd"))
    assert value(fams, "swarm_agent_threads") == len(os.listdir("/proc/self/task"))
    start = value(fams, "swarm_agent_start_time_seconds")
    assert time.time() - 7 * 86400 < start <= time.time()


# --------------------------------------------------------------------------- all of them


@pytest.mark.parametrize(
    "factory",
    [cpu.create, memory.create, pressure.create, network.create, disk.create, filesystem.create],
)
def test_unreadable_files_never_raise(
    tmp_path: Path, factory: Callable[[CollectorContext], Collector]
) -> None:
    # every file the collectors read is a directory here: reads fail with IsADirectoryError
    proc = tmp_path / "proc"
    for rel in ("stat", "meminfo", "vmstat", "net/dev", "diskstats", "self/mounts",
                "pressure/cpu", "pressure/memory", "pressure/io"):
        (proc / rel).mkdir(parents=True)
    c = factory(make_ctx(proc, tmp_path / "sys"))
    fams = c.collect()
    assert fams == []
    st = c.status()
    assert st.state in ("unavailable", "degraded")
    assert str(proc) in st.message
    c.close()


def test_filesystem_local_types_inline_network_types_on_workers(tmp_path: Path) -> None:
    # Local filesystems cannot hang on a remote server: no thread hand-off for them.
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mounts").write_text(
        "/dev/sda1 / ext4 rw 0 0\nnfs.example.com:/export /mnt/nfs nfs4 rw 0 0\n"
        "s3fs /mnt/bucket fuse.s3fs rw 0 0\n"
    )
    table = _fix_table()
    table["/mnt/bucket"] = table["/mnt/nfs"]
    fake = FakeStatvfs(table)
    col = filesystem.FilesystemCollector(
        CollectorContext(MonitoringConfig(proc_root=str(proc))), statvfs=fake
    )
    try:
        col.collect()
    finally:
        col.close()
    here = threading.current_thread().name
    assert fake.threads["/"] == here
    assert fake.threads["/mnt/nfs"] != here
    assert fake.threads["/mnt/bucket"] != here
