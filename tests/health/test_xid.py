"""XID tracking: parsing, kernel log sources, the tracker, its collector and the gpu_xid check."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.core import GaugeMetricFamily

from swarm_maint.config import HealthConfig
from swarm_maint.health.check import ACTIONS, FrameSamples, HealthContext
from swarm_maint.health.checks.xid import create as create_xid_checks
from swarm_maint.health.xid import (
    FileSource,
    JournalSource,
    KernelLogError,
    KmsgSource,
    OomKill,
    XidTracker,
    normalize_pci_bus_id,
    open_source,
    parse_kmsg_record,
    parse_oom,
    parse_xid,
)
from swarm_maint.health.xid_catalog import CATALOG, classify, lookup
from swarm_maint.monitoring.hub import Frame
from swarm_maint.store import Store
from tests.fake_clock import FakeClock
from tests.metric_samples import value

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "kernel_logs"
DMESG = LOGS / "dmesg.log"
KMSG = LOGS / "kmsg_records.txt"
JOURNAL = LOGS / "journal_short.log"

GPU17 = "00000000:17:00.0"
GPU3B = "00000000:3B:00.0"
GPUB1 = "00000000:B1:00.0"

DMESG_TOTALS = {
    (GPU3B, 13): 2, (GPU3B, 43): 1, (GPU3B, 31): 1,
    (GPU17, 63): 1, (GPU17, 48): 1, (GPU17, 79): 2,
    (GPUB1, 999): 1,
}
XID_LINE = ("[10022.700000] NVRM: Xid (PCI:0000:17:00): 79, pid='<unknown>', name=<unknown>, "
            "GPU has fallen off the bus.\n")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- parsing ----------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "expected"), [
    ("NVRM: Xid (PCI:0000:17:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off "
     "the bus.", (GPU17, 79)),
    ("[ 8123.456789] NVRM: Xid (PCI:0000:3b:00): 13, Graphics SM Warp Exception on (GPC 0, "
     "TPC 1, SM 0): Out Of Range Address", (GPU3B, 13)),
    ("NVRM: Xid (0000:3b:00): 31, Ch 0000001e, engmask 00000101, intr 10000000",
     (GPU3B, 31)),
    ("May 06 14:02:11 node kernel: NVRM: Xid (PCI:0000:b1:00): 154, GPU recovery action "
     "changed from 0x0 (None) to 0x1 (GPU Reset Required)", (GPUB1, 154)),
    ("NVRM: Xid (PCI:0001:c3:1f.1): 94, Contained: SM (0x1)", ("00000001:C3:1F.1", 94)),
    ("NVRM: Xid (PCI:0000:17:00):74, NVLink: fatal error detected", (GPU17, 74)),
])
def test_parse_xid_formats(line: str, expected: tuple[str, int]) -> None:
    assert parse_xid(line) == expected


@pytest.mark.parametrize("line", [
    "NVRM: GPU 0000:17:00.0: GPU has fallen off the bus.",
    "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.54.15",
    "audit: Xid (PCI:0000:17:00) 79 without the NVRM prefix",
    "",
])
def test_parse_xid_ignores_other_lines(line: str) -> None:
    assert parse_xid(line) is None


@pytest.mark.parametrize(("raw", "expected"), [
    ("0000:17:00", GPU17),
    ("PCI:0000:3b:00", GPU3B),
    ("00000000:3B:00.0", GPU3B),
    ("3b:00.0", GPU3B),
    ("0002:0a:01.3", "00000002:0A:01.3"),
])
def test_normalize_pci_bus_id(raw: str, expected: str) -> None:
    assert normalize_pci_bus_id(raw) == expected


def test_normalize_pci_bus_id_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a PCI address"):
        normalize_pci_bus_id("not-an-address")


def test_parse_oom_both_line_forms() -> None:
    lines = DMESG.read_text().splitlines()
    kills = [k for k in map(parse_oom, lines) if k is not None]
    assert kills == [OomKill(51234, "python"), OomKill(51234, "python"),
                     OomKill(61001, "torchrun")]
    assert parse_oom("oom_reaper: reaped process 51234 (python), now anon-rss:0kB") is None
    assert parse_oom("python invoked oom-killer: gfp_mask=0x1100cca") is None


def test_parse_every_xid_of_the_dmesg_fixture() -> None:
    found: dict[tuple[str, int], int] = {}
    for line in DMESG.read_text().splitlines():
        x = parse_xid(line)
        if x is not None:
            found[x] = found.get(x, 0) + 1
    assert found == DMESG_TOTALS


def test_parse_kmsg_records() -> None:
    records = [parse_kmsg_record(r) for r in KMSG.read_text().splitlines()]
    assert all(r is not None for r in records)
    seqs = [r[0] for r in records if r is not None]
    assert seqs == sorted(seqs) and seqs[0] == 1021
    third = records[2]
    assert third is not None
    assert third[:2] == (2310, 8123456789)
    assert parse_xid(third[2]) == (GPU3B, 13)
    # extra header fields (caller=...) and continuation (device property) lines
    assert parse_kmsg_record("6,2356,9500000000,-,caller=T1234;eth0: renamed\n") == (
        2356, 9500000000, "eth0: renamed")
    rec = "4,7,100,-;NVRM: Xid (PCI:0000:17:00): 79, x\n SUBSYSTEM=pci\n DEVICE=+pci:0000:17:00.0\n"
    assert parse_kmsg_record(rec) == (7, 100, "NVRM: Xid (PCI:0000:17:00): 79, x")
    assert parse_kmsg_record("no header here") is None
    assert parse_kmsg_record("a,b,c;msg") is None


# -- the catalogue ----------------------------------------------------------------------

REQUIRED = (13, 31, 32, 38, 43, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95, 109,
            119, 120, 121, 140, 143, 154)


def test_catalog_covers_the_required_codes_with_valid_actions() -> None:
    for code in REQUIRED:
        assert code in CATALOG, code
    for info in CATALOG.values():
        assert info.action in ACTIONS
        assert info.severity in ("WARNING", "CRITICAL")
        assert info.title and info.description


@pytest.mark.parametrize(("code", "action", "severity"), [
    (79, "reboot", "CRITICAL"), (48, "reset_gpu", "CRITICAL"),
    (13, "restart_workload", "WARNING"), (31, "restart_workload", "WARNING"),
    (43, "restart_workload", "WARNING"), (45, "restart_workload", "WARNING"),
    (63, "reset_gpu", "WARNING"), (64, "reset_gpu", "CRITICAL"),
    (74, "reset_gpu", "CRITICAL"), (94, "restart_workload", "WARNING"),
    (95, "reset_gpu", "CRITICAL"), (119, "reboot", "CRITICAL"), (120, "reboot", "CRITICAL"),
    (999, "investigate", "WARNING"),
])
def test_catalog_actions(code: int, action: str, severity: str) -> None:
    info = lookup(code)
    assert (info.action, info.severity) == (action, severity)
    assert "drain" in lookup(48).description


def test_xid_154_takes_the_action_from_the_line() -> None:
    line = JOURNAL.read_text().splitlines()[2]
    info = classify(154, line)
    assert (info.action, info.severity) == ("reset_gpu", "CRITICAL")
    reboot = classify(154, "NVRM: Xid (PCI:0000:17:00): 154, GPU recovery action changed "
                           "from 0x0 (None) to 0x2 (Node Reboot Required)")
    assert reboot.action == "reboot"
    assert classify(154, "something else").action == "investigate"


# -- FileSource -------------------------------------------------------------------------

def lines_of(src: FileSource) -> list[str]:
    return [line for _key, line in src.read_new()]


def test_file_source_follows_appends_and_partial_lines(tmp_path: Path) -> None:
    p = tmp_path / "kern.log"
    p.write_text("one\ntwo\n")
    src = FileSource(p)
    assert lines_of(src) == ["one", "two"]
    assert lines_of(src) == []
    with p.open("a") as f:
        f.write("three\nfou")
    assert lines_of(src) == ["three"]
    with p.open("a") as f:
        f.write("r\n")
    assert lines_of(src) == ["four"]
    src.close()


def test_file_source_waits_for_a_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "later.log"
    src = FileSource(p)
    assert src.read_new() == []
    p.write_text("hello\n")
    assert lines_of(src) == ["hello"]


def test_file_source_truncation(tmp_path: Path) -> None:
    p = tmp_path / "kern.log"
    p.write_text("a long first line\nsecond\n")
    src = FileSource(p)
    keys_before = src.read_new()
    p.write_text("new\n")  # truncated and rewritten (copytruncate)
    after = src.read_new()
    assert [line for _k, line in after] == ["new"]
    assert after[0][0] != keys_before[0][0]  # same offset, different record: another key


def test_file_source_rotation(tmp_path: Path) -> None:
    p = tmp_path / "kern.log"
    p.write_text("old1\n")
    src = FileSource(p)
    assert lines_of(src) == ["old1"]
    with p.open("a") as f:
        f.write("old2\n")  # written just before the rotation: must not be lost
    p.rename(tmp_path / "kern.log.1")
    assert lines_of(src) == ["old2"]  # not recreated yet: the old file is still followed
    p.write_text("new1\n")
    assert lines_of(src) == ["new1"]
    with p.open("a") as f:
        f.write("new2\n")
    assert lines_of(src) == ["new2"]


def test_file_source_position_survives_a_new_instance(tmp_path: Path) -> None:
    p = tmp_path / "kern.log"
    p.write_text("a\nb\n")
    first = FileSource(p)
    assert lines_of(first) == ["a", "b"]
    pos = first.position()
    first.close()
    with p.open("a") as f:
        f.write("c\n")
    second = FileSource(p)
    second.seek(pos)
    assert lines_of(second) == ["c"]
    # closed sources resume where they were
    with p.open("a") as f:
        f.write("d\n")
    second.close()
    assert lines_of(second) == ["d"]
    # a position of another file (rotated since) does not apply: read from the start
    third = FileSource(p)
    third.seek("1:9999")
    assert lines_of(third) == ["a", "b", "c", "d"]


def test_file_source_start_at_end(tmp_path: Path) -> None:
    p = tmp_path / "kern.log"
    p.write_text("history\n")
    src = FileSource(p, start_at_end=True)
    assert src.read_new() == []
    with p.open("a") as f:
        f.write("fresh\n")
    assert lines_of(src) == ["fresh"]


def test_file_source_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KernelLogError, match="is a directory"):
        FileSource(tmp_path)


# -- KmsgSource -------------------------------------------------------------------------

def test_kmsg_permission_denied_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(*_a: object, **_k: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(KernelLogError, match=r"cannot read /dev/kmsg: permission denied"):
        KmsgSource("/dev/kmsg")


def test_kmsg_missing_device_is_clear(tmp_path: Path) -> None:
    with pytest.raises(KernelLogError, match="no such device"):
        KmsgSource(str(tmp_path / "kmsg"))


def _kmsg_readable() -> str | None:
    """None when /dev/kmsg can be read here, else why not."""
    try:
        src = KmsgSource("/dev/kmsg")
        src.read_new()
        src.close()
    except KernelLogError as exc:
        return str(exc)
    return None


def test_kmsg_for_real() -> None:
    why = _kmsg_readable()
    if why is not None:
        # unreadable (container, no CAP_SYSLOG): the error must say so plainly
        assert why.startswith("cannot read /dev/kmsg: ")
        pytest.skip(f"/dev/kmsg not readable here: {why}")
    first = KmsgSource("/dev/kmsg", boot_id="boot-a")
    records = first.read_new()
    assert records, "the ring buffer of a running kernel is never empty"
    assert all(key.startswith("boot-a:") for key, _line in records)
    seqs = [int(key.split(":")[1]) for key, _line in records]
    assert seqs == sorted(seqs)
    pos = first.position()
    assert pos == f"boot-a:{seqs[-1]}"
    first.close()
    # same boot: a new reader resumes after the saved sequence number
    again = KmsgSource("/dev/kmsg", boot_id="boot-a")
    again.seek(pos)
    assert all(int(k.split(":")[1]) > seqs[-1] for k, _ in again.read_new())
    again.close()
    # another boot: the saved position does not apply, everything is read
    other = KmsgSource("/dev/kmsg", boot_id="boot-b")
    other.seek(pos)
    assert len(other.read_new()) >= len(records) // 2  # (old records may have rotated out)
    other.close()


def test_open_source_factory(tmp_path: Path) -> None:
    p = tmp_path / "kern.log"
    assert isinstance(open_source(str(p)), FileSource)
    if _kmsg_readable() is None:
        assert isinstance(open_source("/dev/kmsg"), KmsgSource)


# -- JournalSource ----------------------------------------------------------------------

def test_journal_without_journalctl_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KernelLogError, match="journalctl not found"):
        open_source("journal")


def _fake_journalctl(tmp_path: Path) -> tuple[Path, Path]:
    """A journalctl stand-in serving the journal fixture as `-o json` entries."""
    entries = tmp_path / "entries.json"
    messages = [line.split(" kernel: ", 1)[-1] for line in JOURNAL.read_text().splitlines()]
    rows: list[dict[str, object]] = [
        {"__CURSOR": f"s=abc;i={i}", "MESSAGE": msg} for i, msg in enumerate(messages, 1)]
    rows[1]["MESSAGE"] = list(messages[1].encode())  # the binary-safe form
    entries.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    script = tmp_path / "journalctl"
    script.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
assert args[:2] == ["-k", "-o"] and args[2] == "json", args
after = next((a.split("=", 1)[1] for a in args if a.startswith("--after-cursor=")), None)
rows = [json.loads(line) for line in open({str(entries)!r})]
if after is not None:
    idx = [r["__CURSOR"] for r in rows].index(after)
    rows = rows[idx + 1:]
for r in rows:
    print(json.dumps(r))
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, entries


def test_journal_source_reads_after_its_cursor(tmp_path: Path) -> None:
    script, _entries = _fake_journalctl(tmp_path)
    src = JournalSource(str(script))
    got = src.read_new()
    assert [k for k, _ in got] == [f"s=abc;i={i}" for i in range(1, 6)]
    assert parse_xid(got[0][1]) == (GPU17, 79)
    assert got[1][1] == "NVRM: GPU 0000:17:00.0: GPU has fallen off the bus."
    assert src.position() == "s=abc;i=5"
    assert src.read_new() == []
    # a new source seeking to a saved cursor reads only what came after
    resumed = JournalSource(str(script))
    resumed.seek("s=abc;i=3")
    assert [k for k, _ in resumed.read_new()] == ["s=abc;i=4", "s=abc;i=5"]


def test_journal_source_reports_journalctl_failure(tmp_path: Path) -> None:
    script = tmp_path / "journalctl"
    script.write_text("#!/bin/sh\necho 'Failed to open journal: permission denied' >&2\n"
                      "exit 1\n")
    script.chmod(0o755)
    with pytest.raises(KernelLogError, match="exited 1: Failed to open journal"):
        JournalSource(str(script)).read_new()


# -- the tracker ------------------------------------------------------------------------

def test_tracker_counts_the_fixture(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text(DMESG.read_text())
    tracker = XidTracker(store, FileSource(log), clock, 86400.0)
    events = tracker.poll()
    assert len(events) == sum(DMESG_TOTALS.values())
    assert tracker.totals() == DMESG_TOTALS
    assert tracker.oom_kills == 2  # the oom-kill: and "Killed process" lines of one kill
    assert tracker.poll() == []
    rows = store.query("SELECT source, position FROM xid_sources")
    assert rows == [(f"file:{log}", FileSource(log).position().split(":")[0]
                     + f":{log.stat().st_size}")]


def test_tracker_counts_every_line_of_a_busy_log(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    log = tmp_path / "kern.log"
    log.write_text("")
    tracker = XidTracker(store, FileSource(log), clock, 86400.0)
    total = 0
    with log.open("a") as f:
        for chunk in range(20):
            for i in range(250):
                gpu = f"{0x17 + i % 4:02x}"
                f.write(f"[{chunk}.{i:06d}] NVRM: Xid (PCI:0000:{gpu}:00): {chunk % 3 + 13}, "
                        f"pid={i}, name=python, noise\n")
                f.write("[0.0] unrelated kernel line\n")
            f.write("[1.0] NVRM: Xid (PCI:0000:17:00): 79, half a li")  # split mid-line
            f.flush()
            total += len(tracker.poll())
            f.write("ne\n")
            f.flush()
    total += len(tracker.poll())
    assert total == 20 * 250 + 20
    totals = tracker.totals()
    assert sum(totals.values()) == total
    assert totals[(GPU17, 79)] == 20
    assert store.query("SELECT COUNT(*) FROM xid_events") == [(total,)]


def test_tracker_persists_across_restarts(store: Store, clock: FakeClock,
                                          tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text(DMESG.read_text())
    first = XidTracker(store, FileSource(log), clock, 86400.0)
    first.poll()
    first.stop()
    # restart: a new tracker and source on the same store and file
    second = XidTracker(store, FileSource(log), clock, 86400.0)
    assert second.totals() == DMESG_TOTALS  # loaded from the store
    assert second.poll() == []  # resumes at the saved position
    with log.open("a") as f:
        f.write(XID_LINE)
    assert [(e.pci_bus_id, e.code) for e in second.poll()] == [(GPU17, 79)]
    assert second.totals()[(GPU17, 79)] == 3
    # lost position (or a source that re-reads from the start): the UNIQUE source key
    # still keeps every event counted once
    store.query("DELETE FROM xid_sources")
    third = XidTracker(store, FileSource(log), clock, 86400.0)
    assert third.poll() == []
    assert third.totals()[(GPU17, 79)] == 3
    assert store.query("SELECT COUNT(*) FROM xid_events") == [
        (sum(DMESG_TOTALS.values()) + 1,)]


def test_tracker_persists_in_a_reopened_store(clock: FakeClock, tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text(XID_LINE)
    s1 = Store(tmp_path / "db" / "state.db")
    XidTracker(s1, FileSource(log), clock, 86400.0).poll()
    s1.close()
    s2 = Store(tmp_path / "db" / "state.db")
    try:
        tracker = XidTracker(s2, FileSource(log), clock, 86400.0)
        assert tracker.poll() == []
        assert tracker.totals() == {(GPU17, 79): 1}
        assert len(tracker.recent()) == 1
    finally:
        s2.close()


def test_recent_ages_out_after_the_window(store: Store, clock: FakeClock,
                                          tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text(XID_LINE)
    tracker = XidTracker(store, FileSource(log), clock, 3600.0)
    tracker.poll()
    clock.advance(3000)
    assert len(tracker.recent()) == 1
    assert len(XidTracker(store, FileSource(log), clock, 3600.0).recent()) == 1
    clock.advance(601)
    assert tracker.recent() == []
    assert XidTracker(store, FileSource(log), clock, 3600.0).recent() == []
    assert tracker.totals() == {(GPU17, 79): 1}  # all-time counts stay


def test_tracker_reports_source_errors(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    class Broken:
        name = "broken"

        def read_new(self) -> list[tuple[str, str]]:
            raise KernelLogError("cannot read /dev/kmsg: permission denied")

        def position(self) -> str:
            return ""

        def seek(self, position: str) -> None:
            pass

        def close(self) -> None:
            pass

    tracker = XidTracker(store, Broken(), clock, 60.0)
    assert tracker.poll() == []
    assert tracker.last_error == "cannot read /dev/kmsg: permission denied"
    assert tracker.collector().status().state == "degraded"


def test_tracker_thread_picks_up_new_lines(store: Store, clock: FakeClock,
                                           tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text("")
    tracker = XidTracker(store, FileSource(log), clock, 86400.0)
    seen: list[int] = []
    tracker.on_events = lambda events: seen.extend(e.code for e in events)
    tracker.start(interval=0.05)
    try:
        with log.open("a") as f:
            f.write(XID_LINE)
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen == [79]
    finally:
        t0 = time.monotonic()
        tracker.stop()
        assert time.monotonic() - t0 < 1.0


def test_collector_exports_the_counters(store: Store, clock: FakeClock,
                                        tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text(DMESG.read_text())
    tracker = XidTracker(store, FileSource(log), clock, 86400.0)
    tracker.poll()
    col = tracker.collector()
    assert col.name == "xid"
    fams = col.collect()
    assert value(fams, "swarm_gpu_xid_errors_total", pci_bus_id=GPU17, code="79") == 2
    assert value(fams, "swarm_gpu_xid_errors_total", pci_bus_id=GPU3B, code="13") == 2
    assert value(fams, "swarm_gpu_xid_errors_total", pci_bus_id=GPUB1, code="999") == 1
    assert value(fams, "swarm_kernel_oom_kills_logged_total") == 2
    assert col.status().state == "ok"
    col.close()


# -- the gpu_xid check ------------------------------------------------------------------

def _frame_with_gpus(*gpus: tuple[str, str]) -> FrameSamples:
    lost = GaugeMetricFamily("swarm_gpu_lost", "", labels=["gpu", "uuid", "pci_bus_id", "name"])
    for index, pci in gpus:
        lost.add_metric([index, f"GPU-{index}", pci, "NVIDIA H100"], 0.0)
    return FrameSamples(Frame(0.0, (lost,), 1))


def _xid_check(tracker: XidTracker | None, frame: FrameSamples | None = None,
               **extras: object) -> HealthContext:
    ctx = HealthContext(config=HealthConfig(), frame=lambda: frame or _frame_with_gpus(),
                        xids=tracker)
    ctx.extras.update(extras)
    return ctx


def test_xid_check_without_a_tracker() -> None:
    [check] = create_xid_checks(_xid_check(None))
    assert (check.name, check.level) == ("gpu_xid", 1)
    r = check.run()
    assert (r.status, r.message) == ("UNKNOWN", "no kernel log source configured")
    err = ("/dev/kmsg: cannot read /dev/kmsg: permission denied (run the agent as root, give "
           "it CAP_SYSLOG, or set health.kernel_log to a readable file or 'journal')")
    [check] = create_xid_checks(_xid_check(None, kernel_log_error=err))
    r = check.run()
    assert r.status == "UNKNOWN"
    assert r.message.startswith("cannot read /dev/kmsg: permission denied")


def test_xid_check_judges_recent_xids(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text("")
    tracker = XidTracker(store, FileSource(log), clock, 86400.0)
    [check] = create_xid_checks(_xid_check(tracker, _frame_with_gpus(("0", GPU3B))))
    assert check.run().status == "OK"

    with log.open("a") as f:
        f.write("NVRM: Xid (PCI:0000:3b:00): 13, Graphics SM Warp Exception\n")
    tracker.poll()
    r = check.run()
    assert (r.status, r.action) == ("WARNING", "restart_workload")
    assert r.message.startswith(f"GPU 0 ({GPU3B}): Xid 13 (graphics engine exception) x1")

    log.write_text(DMESG.read_text())  # truncated and rewritten: the whole fixture
    clock.advance(60)
    tracker.poll()
    r = check.run()
    assert (r.status, r.action) == ("CRITICAL", "reboot")
    assert (f"GPU {GPU17}: Xid 79 (GPU fell off the bus) x2 in the last 24h: reboot the node"
            in r.message)
    rows = {(x["pci_bus_id"], x["code"]): x for x in r.details["xids"]}
    assert {k: x["count"] for k, x in rows.items()} == {**DMESG_TOTALS, (GPU3B, 13): 3}
    assert rows[(GPU17, 79)]["last_seen"] == clock.time()
    assert rows[(GPU3B, 13)]["gpu"] == "0"

    clock.advance(86400 - 59)
    r = check.run()  # the first Xid 13 aged out (24h+1s); the rest is 59s younger
    assert r.status == "CRITICAL"
    assert [x["count"] for x in r.details["xids"] if x["code"] == 13] == [2]
    clock.advance(60)
    r = check.run()
    assert (r.status, r.action) == ("OK", None)
    assert r.message == "no XID in the last 24h"
