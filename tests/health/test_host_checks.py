"""Host health checks: disk, memory, kernel, clock, system, services, network, smart.

Frame-based checks read frames the real collectors produced from real inputs (a small
tmpfs filled up, a proc tree in tmp_path) or, for threshold arithmetic, frames of
metric families built here. OS-facing checks run against fake sys/root trees, the real
/proc, real TCP listeners, and real subprocesses (a fake smartctl/systemctl script that
prints the real tools' output shapes).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric

from swarm_maint.config import HealthConfig, MonitoringConfig
from swarm_maint.health.check import CheckResult, FrameSamples, HealthContext
from swarm_maint.health.checks import (
    clock,
    disk,
    kernel,
    memory,
    network,
    services,
    smart,
    system,
)
from swarm_maint.monitoring.collector import CollectorContext
from swarm_maint.monitoring.collectors import filesystem as fs_collector
from swarm_maint.monitoring.collectors import memory as mem_collector
from swarm_maint.monitoring.hub import Frame, MetricsHub
from tests.fake_clock import FakeClock

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "health"
KIB = 1024
MIB = 1024 * 1024
GIB = 1024 * MIB


def frame_of(*families: Metric) -> FrameSamples:
    return FrameSamples(Frame(1_800_000_000.0, tuple(families), 1))


EMPTY = FrameSamples(Frame(0.0, (), 0))


def make_ctx(frame: FrameSamples = EMPTY, tmp_path: Path | None = None,
             clock_: Any = None, **health: Any) -> HealthContext:
    ctx = HealthContext(config=HealthConfig(**health), frame=lambda: frame)
    if tmp_path is not None:
        ctx.proc_root = tmp_path / "proc"
        ctx.sys_root = tmp_path / "sys"
    if clock_ is not None:
        ctx.clock = clock_
    return ctx


def fs_frame(*rows: tuple[str, str, str, float, float, float, float, float, int, int]
             ) -> FrameSamples:
    """Rows of (device, mountpoint, fstype, size, free, avail, files, files_free,
    readonly, stuck), like the filesystem collector reports them."""
    names = ["size_bytes", "free_bytes", "avail_bytes", "files", "files_free", "readonly",
             "stuck"]
    fams = {n: GaugeMetricFamily(f"swarm_filesystem_{n}", n,
                                 labels=["device", "mountpoint", "fstype"]) for n in names}
    for dev, mp, fstype, *values in rows:
        for n, v in zip(names, values, strict=True):
            if n != "stuck" and values[-1]:
                continue  # a stuck mount only has the stuck sample
            fams[n].add_metric([dev, mp, fstype], float(v))
    return frame_of(*fams.values())


def by_name(checks: list[Any]) -> dict[str, Any]:
    return {c.name: c for c in checks}


# -- disk ---------------------------------------------------------------------------------

def until_full(step: Callable[[int], object]) -> None:
    """Call step(0), step(1), … until the filesystem says ENOSPC."""
    for i in range(100_000):
        try:
            step(i)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return
    pytest.fail("the tmpfs never filled up")


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs with 64 inodes, every inode and every byte used."""
    mnt = tmp_path / "full mount"  # a space, escaped as \040 in /proc/self/mounts
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "tmpfs",
                           str(mnt)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (this test needs root): {proc.stderr.strip()}")
    try:
        until_full(lambda i: (mnt / f"f{i}").write_bytes(b"x"))  # every inode
        with open(mnt / "f0", "ab", buffering=0) as f:
            until_full(lambda _i: f.write(b"\0" * 65536))  # every block
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_space_and_inodes_on_a_full_tmpfs(full_tmpfs: Path) -> None:
    collector = fs_collector.FilesystemCollector(CollectorContext(MonitoringConfig()))
    hub = MetricsHub([collector], interval=1.0, node_name="test")
    try:
        frame = FrameSamples(hub.collect_once())
    finally:
        hub.close()
    checks = by_name(disk.create(make_ctx(frame)))

    space = checks["disk_space"].run()
    assert space.status == "CRITICAL"
    assert f"{full_tmpfs} 100% of space used" in space.message
    assert str(full_tmpfs) in space.details["over"]
    assert space.action == "investigate"
    assert space.details["filesystems"][str(full_tmpfs)]["fstype"] == "tmpfs"

    inodes = checks["disk_inodes"].run()
    assert inodes.status == "CRITICAL"
    assert str(full_tmpfs) in inodes.message
    assert inodes.details["filesystems"][str(full_tmpfs)]["files"] == 64

    assert checks["disk_stuck"].run().status == "OK"


def test_disk_space_thresholds_like_df() -> None:
    # 100 GiB, 6 GiB free of which 3 GiB are reserved for root: df says 94/(94+3) used
    frame = fs_frame(
        ("/dev/sda1", "/", "ext4", 100 * GIB, 6 * GIB, 3 * GIB, 1000, 900, 0, 0),
        ("/dev/sdb1", "/data", "xfs", 100 * GIB, 12 * GIB, 12 * GIB, 1000, 900, 0, 0),
        ("/dev/sdc1", "/scratch", "xfs", 100 * GIB, 50 * GIB, 50 * GIB, 1000, 100, 0, 0),
    )
    result = disk.DiskSpaceCheck(make_ctx(frame)).run()
    assert result.status == "CRITICAL"
    assert result.message.startswith("/ 97% of space used")
    assert "/data" not in result.message  # only the worst level's names
    assert result.details["over"] == ["/"]
    assert result.details["filesystems"]["/data"]["used_ratio"] == pytest.approx(0.88)

    warn_only = fs_frame(
        ("/dev/sdb1", "/data", "xfs", 100 * GIB, 12 * GIB, 12 * GIB, 0, 0, 0, 0))
    result = disk.DiskSpaceCheck(make_ctx(warn_only)).run()
    assert (result.status, result.details["over"]) == ("WARNING", ["/data"])

    ok = disk.DiskSpaceCheck(make_ctx(warn_only, thresholds={"disk_used_warning": 0.9})).run()
    assert ok.status == "OK"

    inodes = disk.DiskInodesCheck(make_ctx(frame)).run()
    assert inodes.status == "WARNING"
    assert inodes.details["over"] == ["/scratch"]


def test_disk_readonly_and_stuck() -> None:
    frame = fs_frame(
        ("/dev/sda1", "/", "ext4", GIB, GIB, GIB, 10, 10, 0, 0),
        ("/dev/nvme0n1p1", "/data", "xfs", GIB, GIB, GIB, 10, 10, 1, 0),
        ("/dev/loop3", "/snap/core22/1380", "squashfs", GIB, 0, 0, 10, 0, 1, 0),
        ("/dev/sr0", "/media/cdrom", "iso9660", GIB, 0, 0, 10, 0, 1, 0),
        ("tmpfs", "/run/ro", "tmpfs", GIB, GIB, GIB, 10, 10, 1, 0),
    )
    result = disk.DiskReadonlyCheck(make_ctx(frame)).run()
    assert result.status == "CRITICAL"
    assert result.action == "reboot"
    assert "/data (xfs on /dev/nvme0n1p1)" in result.message
    assert "/snap" not in result.message and "cdrom" not in result.message
    assert result.details["readonly_other"] == ["/run/ro"]

    fine = fs_frame(("/dev/loop3", "/snap/core22/1380", "ext4", GIB, 0, 0, 10, 0, 1, 0))
    assert disk.DiskReadonlyCheck(make_ctx(fine)).run().status == "OK"

    stuck = fs_frame(
        ("srv:/export", "/mnt/nfs", "nfs4", 0, 0, 0, 0, 0, 0, 1),
        ("/dev/sda1", "/", "ext4", GIB, GIB, GIB, 10, 10, 0, 0),
    )
    result = disk.DiskStuckCheck(make_ctx(stuck)).run()
    assert result.status == "CRITICAL"
    assert "statvfs hangs on /mnt/nfs (nfs4 srv:/export)" in result.message
    assert "network filesystem server unreachable" in result.message
    # the stuck mount has no size: the space check judges the others and says OK
    assert disk.DiskSpaceCheck(make_ctx(stuck)).run().status == "OK"


def test_disk_checks_without_metrics_are_unknown() -> None:
    for check in disk.create(make_ctx(EMPTY)):
        result = check.run()
        assert result.status == "UNKNOWN", check.name
        assert "filesystem collector" in result.message


# -- memory, kernel, swap (through the real memory collector) ----------------------------

def write_meminfo(proc: Path, total_kb: int, avail_kb: int, swap_kb: int = 0,
                  corrupted_kb: int | None = None) -> None:
    lines = [f"MemTotal:       {total_kb} kB", "MemFree:          102400 kB",
             f"MemAvailable:   {avail_kb} kB", "Buffers:           10240 kB",
             "Cached:           204800 kB", f"SwapTotal:      {swap_kb} kB",
             f"SwapFree:       {swap_kb} kB"]
    if corrupted_kb is not None:
        lines.append(f"HardwareCorrupted: {corrupted_kb} kB")
    (proc / "meminfo").write_text("\n".join(lines) + "\n")


def write_vmstat(proc: Path, oom_kills: int) -> None:
    (proc / "vmstat").write_text(f"nr_free_pages 512000\npswpin 0\npswpout 0\n"
                                 f"oom_kill {oom_kills}\n")


class ProcHub:
    """The real memory collector over a proc tree in tmp_path, behind a MetricsHub."""

    def __init__(self, proc: Path) -> None:
        proc.mkdir(exist_ok=True)
        cfg = MonitoringConfig(proc_root=str(proc))
        self.hub = MetricsHub([mem_collector.create(CollectorContext(cfg))], 1.0, "test")

    def frame(self) -> FrameSamples:
        return FrameSamples(self.hub.collect_once())


def test_memory_available_and_hardware_corrupted(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    ph = ProcHub(proc)
    write_vmstat(proc, 0)
    write_meminfo(proc, 64 * MIB // KIB, 2 * MIB // KIB, corrupted_kb=0)  # 3% available
    frame = ph.frame()
    checks = by_name(memory.create(make_ctx(frame)))
    low = checks["memory_available"].run()
    assert low.status == "WARNING"
    assert "only 2.0 MiB of 64.0 MiB RAM available" in low.message
    assert low.details["available_ratio"] == pytest.approx(2 / 64, abs=1e-4)
    assert checks["memory_hardware_corrupted"].run().status == "OK"

    write_meminfo(proc, 64 * MIB // KIB, 32 * MIB // KIB, corrupted_kb=4)
    checks = by_name(memory.create(make_ctx(ph.frame())))
    assert checks["memory_available"].run().status == "OK"
    bad = checks["memory_hardware_corrupted"].run()
    assert bad.status == "WARNING"
    assert bad.message.startswith("4.0 KiB of RAM taken out of service")

    write_meminfo(proc, 64 * MIB // KIB, 32 * MIB // KIB)  # a kernel without the field
    result = memory.HardwareCorruptedCheck(make_ctx(ph.frame())).run()
    assert (result.status, result.details["reported"]) == ("OK", False)
    assert memory.MemoryAvailableCheck(make_ctx(EMPTY)).run().status == "UNKNOWN"


def test_kernel_oom_counts_kills_since_the_previous_run(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    ph = ProcHub(proc)
    write_meminfo(proc, 1024, 512)
    write_vmstat(proc, 3)
    current = {"frame": ph.frame()}
    clk = FakeClock()
    ctx = HealthContext(config=HealthConfig(), frame=lambda: current["frame"], clock=clk)
    (check,) = kernel.create(ctx)
    first = check.run()
    assert first.status == "OK" and "baseline" in first.message

    clk.advance(30)
    current["frame"] = ph.frame()
    assert check.run().status == "OK"

    write_vmstat(proc, 5)
    clk.advance(30)
    current["frame"] = ph.frame()
    result = check.run()
    assert result.status == "WARNING"
    assert result.action == "restart_workload"
    assert result.message.startswith("2 process(es) killed by the OOM killer in the last 30s")

    clk.advance(30)
    assert check.run().status == "OK"  # no new kills since

    assert kernel.OomCheck(make_ctx(EMPTY)).run().status == "UNKNOWN"


def test_swap_policy(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    ph = ProcHub(proc)
    write_vmstat(proc, 0)
    write_meminfo(proc, 1024 * 1024, 512 * 1024, swap_kb=2 * 1024 * 1024)
    frame = ph.frame()
    result = system.SwapPolicyCheck(make_ctx(frame)).run()
    assert result.status == "WARNING"
    assert "swap is on (2.0 GiB): GPU workloads and kubelet expect it off" in result.message

    allowed = make_ctx(frame)
    allowed.extras["swap_allowed"] = True
    assert system.SwapPolicyCheck(allowed).run().status == "OK"

    write_meminfo(proc, 1024 * 1024, 512 * 1024, swap_kb=0)
    result = system.SwapPolicyCheck(make_ctx(ph.frame())).run()
    assert (result.status, result.message) == ("OK", "swap is off")
    assert system.SwapPolicyCheck(make_ctx(EMPTY)).run().status == "UNKNOWN"


# -- EDAC ---------------------------------------------------------------------------------

def write_edac(sys_root: Path, mc: str, ce: int, ue: int,
               dimms: dict[str, tuple[str, int, int]] | None = None) -> None:
    d = sys_root / "devices" / "system" / "edac" / "mc" / mc
    d.mkdir(parents=True, exist_ok=True)
    (d / "ce_count").write_text(f"{ce}\n")
    (d / "ue_count").write_text(f"{ue}\n")
    (d / "mc_name").write_text("Skylake Socket#0 IMC#0\n")
    for name, (label, dce, due) in (dimms or {}).items():
        dd = d / name
        dd.mkdir(exist_ok=True)
        (dd / "dimm_label").write_text(f"{label}\n")
        (dd / "dimm_ce_count").write_text(f"{dce}\n")
        (dd / "dimm_ue_count").write_text(f"{due}\n")


def test_memory_edac_from_a_sys_tree(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path=tmp_path)
    (check,) = [c for c in memory.create(ctx) if c.name == "memory_edac"]
    result = check.run()
    assert result.status == "OK"
    assert result.message.startswith("EDAC not available")
    assert result.details == {"edac_available": False}

    sys_root = tmp_path / "sys"
    write_edac(sys_root, "mc0", 2, 0, {"dimm0": ("CPU_SrcID#0_Ha#0_Chan#0_DIMM#0", 2, 0),
                                       "dimm1": ("CPU_SrcID#0_Ha#0_Chan#1_DIMM#0", 0, 0)})
    write_edac(sys_root, "mc1", 0, 0)
    check = memory.EdacCheck(ctx)
    first = check.run()
    assert first.status == "OK"
    assert first.message == "no uncorrectable memory errors (2 corrected since boot)"
    assert first.details["controllers"]["mc0"]["dimms"]["dimm0"]["ce_count"] == 2

    assert check.run().status == "OK"  # unchanged
    write_edac(sys_root, "mc0", 7, 0, {"dimm0": ("CPU_SrcID#0_Ha#0_Chan#0_DIMM#0", 7, 0)})
    grown = check.run()
    assert grown.status == "WARNING"
    assert grown.action == "investigate"
    assert "mc0 +5 (CPU_SrcID#0_Ha#0_Chan#0_DIMM#0)" in grown.message
    assert check.run().status == "OK"  # no further growth

    write_edac(sys_root, "mc1", 0, 1, {"dimm3": ("B2", 0, 1)})
    ue = check.run()
    assert ue.status == "CRITICAL"
    assert ue.action == "replace_hardware"
    assert "mc1: 1 on B2 (1)" in ue.message


# -- system: reboot-required --------------------------------------------------------------

def test_reboot_required_from_a_fake_root(tmp_path: Path) -> None:
    ctx = make_ctx()
    check = system.RebootRequiredCheck(ctx, root=tmp_path)
    assert check.run().status == "OK"

    run_dir = tmp_path / "var" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "reboot-required").write_text("*** System restart required ***\n")
    bare = check.run()
    assert (bare.status, bare.action) == ("WARNING", "reboot")
    assert bare.details["packages"] == []

    (run_dir / "reboot-required.pkgs").write_text("linux-image-6.8.0-45-generic\nlibc6\n"
                                                  "linux-image-6.8.0-45-generic\n")
    result = check.run()
    assert result.status == "WARNING"
    assert "by linux-image-6.8.0-45-generic, libc6" in result.message
    assert result.details["packages"] == ["linux-image-6.8.0-45-generic", "libc6"]
    assert [c.name for c in system.create(ctx)] == ["reboot_required", "swap_policy"]


# -- services -----------------------------------------------------------------------------

def test_processes_from_the_real_proc() -> None:
    own = Path("/proc/self/comm").read_text().strip()
    ctx = make_ctx(processes=[own, "no-such-proc-xyz"])
    ctx.proc_root = Path("/proc")
    checks = by_name(services.create(ctx))
    assert "systemd_units" not in checks  # no units configured
    result = checks["processes"].run()
    assert result.status == "CRITICAL"
    assert result.message.startswith("not running: no-such-proc-xyz")
    assert os.getpid() in result.details["processes"][own]

    ok = services.ProcessesCheck(make_ctx(processes=[own])).run()
    assert ok.status == "OK"
    assert services.create(make_ctx()) == []


def test_processes_match_argv0_basename(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, comm, cmdline in ((12, "raylet", b"/opt/ray/raylet\0--port\0"),
                               (40, "python3", b"/usr/bin/gcs_server_long_name\0-x\0"),
                               (41, "kworker/0:1", b"")):
        d = proc / str(pid)
        d.mkdir(parents=True)
        (d / "comm").write_text(comm + "\n")
        (d / "cmdline").write_bytes(cmdline)
    (proc / "self").mkdir()
    found = services.running_processes(proc, ["raylet", "gcs_server_long_name", "dashboard"])
    assert found == {"raylet": [12], "gcs_server_long_name": [40], "dashboard": []}


def test_systemd_units_on_this_machine() -> None:
    """Whichever branch applies here, asserted deterministically."""
    ctx = make_ctx(units=["swarm-maint-no-such-unit.service"])
    (check,) = services.create(ctx)
    result = check.run()
    exe = shutil.which("systemctl")
    if exe is None:
        assert result.status == "UNKNOWN"
        assert result.message.startswith("systemctl not available")
    elif not Path("/run/systemd/system").is_dir():
        assert result.status == "UNKNOWN"
        assert result.message.startswith("systemd is not running on this host")
    else:
        assert result.status == "CRITICAL"
        assert "swarm-maint-no-such-unit.service is inactive" in result.message


def test_systemd_units_states(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "systemctl"
    shutil.copy(FIXTURES / "systemctl", fake)
    fake.chmod(0o755)
    monkeypatch.setenv("FAKE_SYSTEMCTL_ACTIVE", "containerd.service kubelet.service")
    ctx = make_ctx(units=["containerd.service", "kubelet.service"])
    ok = services.SystemdUnitsCheck(ctx, systemctl=str(fake)).run()
    assert ok.status == "OK"
    assert ok.details["units"] == {"containerd.service": "active",
                                   "kubelet.service": "active"}

    ctx = make_ctx(units=["containerd.service", "nvidia-fabricmanager.service"])
    bad = services.SystemdUnitsCheck(ctx, systemctl=str(fake)).run()
    assert bad.status == "CRITICAL"
    assert bad.action == "investigate"
    assert bad.message.startswith("nvidia-fabricmanager.service is inactive")

    missing = services.SystemdUnitsCheck(ctx, systemctl=str(tmp_path / "nope")).run()
    assert missing.status == "UNKNOWN"
    assert missing.message.startswith("systemctl not available")


# -- network ------------------------------------------------------------------------------

@pytest.fixture
def listener() -> Iterator[int]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        srv.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def test_endpoints(listener: int) -> None:
    dead = closed_port()
    ctx = make_ctx(endpoints=[
        {"name": "gcs", "host": "127.0.0.1", "port": listener},
        {"name": "dead", "host": "127.0.0.1", "port": dead, "timeout": "1s"},
    ])
    (check,) = network.create(ctx)
    result = check.run()
    assert result.status == "CRITICAL"
    assert result.message.startswith(f"dead (127.0.0.1:{dead}) unreachable: Connection refused")
    gcs = result.details["endpoints"]["gcs"]
    assert gcs["ok"] is True and 0 < gcs["latency_seconds"] < 0.5
    assert result.details["endpoints"]["dead"]["latency_seconds"] is None

    ok = network.EndpointsCheck(make_ctx(endpoints=[
        {"name": "gcs", "host": "127.0.0.1", "port": listener}])).run()
    assert ok.status == "OK"
    assert ok.details["endpoints"]["gcs"]["latency_seconds"] > 0

    slow = network.EndpointsCheck(make_ctx(endpoints=[
        {"name": "gcs", "host": "127.0.0.1", "port": listener, "warn_latency": 0}])).run()
    assert slow.status == "WARNING"
    assert "gcs (127.0.0.1:" in slow.message and "slow: connected in" in slow.message

    assert network.create(make_ctx()) == []


# -- clock --------------------------------------------------------------------------------

def test_clock_sync_from_injected_readings() -> None:
    ctx = make_ctx(thresholds={"clock_offset_warning": "100ms"})

    def reading(state: int, status: int, maxerr: int, esterr: int) -> CheckResult:
        r = clock.AdjtimexReading(state, status, maxerr, esterr)
        return clock.ClockSyncCheck(ctx, read=lambda: r).run()

    synced = reading(0, 0x2001, 250_000, 1_500)  # STA_PLL | STA_NANO
    assert synced.status == "OK"
    assert synced.details["esterror_seconds"] == pytest.approx(0.0015)

    unsynced = reading(clock.TIME_ERROR, clock.STA_UNSYNC, 16_000_000, 16_000_000)
    assert unsynced.status == "WARNING"
    assert unsynced.message.startswith("system clock not synchronised "
                                       "(is chrony/ntpd/systemd-timesyncd running?")
    assert reading(0, clock.STA_UNSYNC, 0, 0).status == "WARNING"

    drift = reading(0, 0x2001, 900_000, 300_000)
    assert drift.status == "WARNING"
    assert "estimated clock error 0.3s is above 0.1s" in drift.message

    def broken() -> clock.AdjtimexReading:
        raise OSError(1, "Operation not permitted")

    assert clock.ClockSyncCheck(ctx, read=broken).run().status == "UNKNOWN"


def test_clock_sync_real_adjtimex() -> None:
    r = clock.adjtimex()
    assert isinstance(r, clock.AdjtimexReading)
    assert 0 <= r.state <= 5
    assert r.maxerror_us >= 0 and r.esterror_us >= 0
    (check,) = clock.create(make_ctx())
    result = check.run()
    # a container may well see an unsynchronised host clock: WARNING is fine there
    assert result.status in {"OK", "WARNING"}
    assert result.details["unsynchronised"] == (
        r.state == clock.TIME_ERROR or bool(r.status & clock.STA_UNSYNC))


# -- smart --------------------------------------------------------------------------------

@pytest.fixture
def fake_smartctl(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "smartctl"
    path.parent.mkdir()
    shutil.copy(FIXTURES / "smartctl", path)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(("scenario", "status", "action", "text"), [
    ("ata_passed", "OK", None, "1 drive(s) healthy"),
    ("ata_failed", "CRITICAL", "replace_hardware",
     "/dev/sda (Samsung SSD 870 EVO 1TB) SMART overall health FAILED"),
    ("nvme_media", "WARNING", "replace_hardware", "12 media error(s)"),
    ("mixed", "WARNING", "replace_hardware", "wear 93% of its rated endurance"),
    ("none", "OK", None, "no SMART-capable drives found"),
    ("denied", "UNKNOWN", None, "/dev/sdb: Permission denied"),
])
def test_smart_through_a_fake_smartctl(fake_smartctl: Path, monkeypatch: pytest.MonkeyPatch,
                                       scenario: str, status: str, action: str | None,
                                       text: str) -> None:
    monkeypatch.setenv("FAKE_SMARTCTL_SCENARIO", scenario)
    (check,) = smart.create(make_ctx(), smartctl=str(fake_smartctl))
    assert (check.level, check.interval) == (1, HealthConfig().full_interval)
    result = check.run()
    assert (result.status, result.action) == (status, action)
    assert text in result.message
    if scenario == "mixed":
        devs = result.details["devices"]
        assert devs["/dev/sda"]["status"] == "OK"
        assert devs["/dev/nvme0"]["percentage_used"] == 93
    if scenario == "ata_failed":
        assert result.details["devices"]["/dev/sda"]["Current_Pending_Sector"] == 24


def test_smart_without_smartctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    assert smart.create(make_ctx()) == []  # only a default family: skipped quietly
    explicit = make_ctx(families=["disk", "smart"])
    (check,) = smart.create(explicit)
    result = check.run()
    assert result.status == "UNKNOWN"
    assert result.message.startswith("smartctl not found on PATH")


def test_judge_device_open_failure() -> None:
    status, msg, action, details = smart.judge_device({
        "smartctl": {"exit_status": 2, "messages": [
            {"string": "Smartctl open device: /dev/sdz failed: No such device",
             "severity": "error"}]},
        "device": {"name": "/dev/sdz"}})
    assert (status, action) == ("UNKNOWN", None)
    assert "No such device" in msg and details["exit_status"] == 2
