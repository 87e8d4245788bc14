"""XIDs from NVML events (NvmlXidSource) and reading several sources at once (MultiSource),
against the fake libnvidia-ml.so.1 driven through the real pynvml."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm_maint.health.nvml_events import (
    NOT_SUPPORTED_MESSAGE,
    MultiSource,
    NvmlXidSource,
    nvml_xid_line,
)
from swarm_maint.health.xid import FileSource, KernelLogError, XidTracker, parse_xid
from swarm_maint.store import Store
from tests.fake_clock import FakeClock
from tests.fake_nvml import (
    FakeNvmlState,
    call_count,
    event_set_count,
    init_refcount,
    reset_events,
)

GPU10 = "00000000:10:00.0"  # the fake's default bus id of GPU 0
GPU11 = "00000000:11:00.0"
GPU3B = "00000000:3B:00.0"

FakeNvml = tuple[Path, FakeNvmlState]


@pytest.fixture
def nvml(fake_nvml: FakeNvml) -> Iterator[FakeNvml]:
    """The fake with its delivered-event counters reset, checked for leaks afterwards."""
    library, _state = fake_nvml
    reset_events(library)
    refs, sets = init_refcount(library), event_set_count(library)
    yield fake_nvml
    assert init_refcount(library) == refs, "an NVML session was not shut down"
    assert event_set_count(library) == sets, "an NVML event set was not freed"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


def _xids(lines: list[tuple[str, str]]) -> list[tuple[str, int] | None]:
    return [parse_xid(line) for _key, line in lines]


def _kernel_line(pci: str, code: int) -> str:
    return f"[ 1234.5] NVRM: Xid (PCI:{pci}): {code}, pid='<unknown>', name=<unknown>, x\n"


# -- NvmlXidSource ----------------------------------------------------------------------

def test_events_become_parseable_lines(nvml: FakeNvml) -> None:
    library, state = nvml
    state.write([{"xid_events": "79,48"}, {"pci_bus_id": "0000:3b:00.0", "xid_events": "13"}])
    source = NvmlXidSource(str(library))
    try:
        assert source.name == "nvml"
        lines = source.read_new()
        assert _xids(lines) == [(GPU10, 79), (GPU10, 48), (GPU3B, 13)]
        assert lines[0][1] == nvml_xid_line(GPU10, 79)
        assert lines[0][1] == "NVRM: Xid (PCI:00000000:10:00.0): 79, reported by NVML event"
        keys = [key for key, _line in lines]
        assert len(set(keys)) == 3
        assert source.position() == "3"
        assert source.read_new() == []  # each event is delivered once
        state.update_gpu(1, xid_events="13,94")  # a new event arrives
        assert _xids(source.read_new()) == [(GPU3B, 94)]
        assert source.position() == "4"
    finally:
        source.close()
    source.close()  # twice is harmless


def test_tracker_counts_each_event_once_across_restarts(nvml: FakeNvml, store: Store) -> None:
    library, state = nvml
    clock = FakeClock()
    state.write([{"xid_events": "79,48"}, {"xid_events": "79"}])
    tracker = XidTracker(store, NvmlXidSource(str(library)), clock, window=3600)
    try:
        new = tracker.poll()
        assert sorted((e.pci_bus_id, e.code) for e in new) == \
            [(GPU10, 48), (GPU10, 79), (GPU11, 79)]
        assert all(e.source_key.startswith("nvml:") for e in new)
        assert tracker.poll() == []
        assert tracker.totals() == {(GPU10, 79): 1, (GPU10, 48): 1, (GPU11, 79): 1}
    finally:
        tracker.stop()

    # a restart: nothing is replayed, the counter goes on, a new event counts once
    state.update_gpu(0, xid_events="79,48,79")
    tracker = XidTracker(store, NvmlXidSource(str(library)), clock, window=3600)
    try:
        assert tracker.source.position() == "3"
        new = tracker.poll()
        assert [(e.pci_bus_id, e.code) for e in new] == [(GPU10, 79)]
        assert new[0].source_key.startswith("nvml:4:")
        assert tracker.totals() == {(GPU10, 79): 2, (GPU10, 48): 1, (GPU11, 79): 1}
        assert tracker.last_error is None
    finally:
        tracker.stop()


def test_no_gpu_supports_events_is_a_clear_error(nvml: FakeNvml) -> None:
    library, state = nvml
    state.write([{"events_supported": 0, "xid_events": "79"}, {"events_supported": 0}])
    with pytest.raises(KernelLogError, match=NOT_SUPPORTED_MESSAGE):
        NvmlXidSource(str(library))
    assert NOT_SUPPORTED_MESSAGE == "NVML XID events not supported on this GPU/driver"
    # (the nvml fixture checks that the session and the event set were released)


def test_no_gpu_at_all_is_a_clear_error(nvml: FakeNvml) -> None:
    library, state = nvml
    state.write([])
    with pytest.raises(KernelLogError, match=f"{NOT_SUPPORTED_MESSAGE} .no NVIDIA GPU found"):
        NvmlXidSource(str(library))


def test_unsupported_gpus_are_skipped(nvml: FakeNvml) -> None:
    library, state = nvml
    state.write([{"events_supported": 0, "xid_events": "79"}, {"xid_events": "31"}])
    source = NvmlXidSource(str(library))
    try:
        assert _xids(source.read_new()) == [(GPU11, 31)]
    finally:
        source.close()


def test_init_failure_and_missing_library(nvml: FakeNvml, tmp_path: Path) -> None:
    library, state = nvml
    state.write([{}], init_error=9)
    with pytest.raises(KernelLogError, match="NVML init failed"):
        NvmlXidSource(str(library))
    with pytest.raises(KernelLogError, match="not found"):
        NvmlXidSource(str(tmp_path / "missing" / "libnvidia-ml.so.1"))


def test_timeout_returns_nothing_quickly(nvml: FakeNvml) -> None:
    library, state = nvml
    state.write([{}])
    source = NvmlXidSource(str(library), timeout_ms=50)
    try:
        waits = call_count(library, "nvmlEventSetWait_v2")
        start = time.monotonic()
        assert source.read_new() == []
        elapsed = time.monotonic() - start
        assert 0.04 <= elapsed < 1.0
        assert call_count(library, "nvmlEventSetWait_v2") == waits + 1
    finally:
        source.close()


def test_wait_error_is_a_kernel_log_error(nvml: FakeNvml, store: Store) -> None:
    library, state = nvml
    state.write([{}])
    tracker = XidTracker(store, NvmlXidSource(str(library)), FakeClock(), window=3600)
    try:
        state.update_node(**{"error.nvmlEventSetWait_v2": 15})
        assert tracker.poll() == []
        assert tracker.last_error is not None
        assert "NVML event wait failed" in tracker.last_error
        state.update_node(**{"error.nvmlEventSetWait_v2": 0})
        state.update_gpu(0, xid_events="45")
        assert [e.code for e in tracker.poll()] == [45]
        assert tracker.last_error is None
    finally:
        tracker.stop()


# -- MultiSource ------------------------------------------------------------------------

def test_multisource_counts_an_xid_seen_in_both_once(
        nvml: FakeNvml, store: Store, tmp_path: Path) -> None:
    library, state = nvml
    log = tmp_path / "kern.log"
    log.write_text(_kernel_line("0000:10:00", 79) + "some other line\n")
    state.write([{"xid_events": "79,48"}])
    clock = FakeClock()
    multi = MultiSource([FileSource(log), NvmlXidSource(str(library))], clock=clock)
    tracker = XidTracker(store, multi, clock, window=3600)
    try:
        new = tracker.poll()
        assert [(e.pci_bus_id, e.code) for e in new] == [(GPU10, 79), (GPU10, 48)]
        assert new[0].source_key.startswith(f"{multi.name}:file:{log}:")  # the first kept
        assert new[1].source_key.startswith(f"{multi.name}:nvml:")
        assert multi.duplicates == 1
        assert tracker.totals() == {(GPU10, 79): 1, (GPU10, 48): 1}

        # NVML first, the kernel log a second later: still one
        clock.advance(5)
        state.update_gpu(0, xid_events="79,48,13")
        assert [e.code for e in tracker.poll()] == [13]
        clock.advance(1)
        with log.open("a") as f:
            f.write(_kernel_line("0000:10:00", 13))
        assert tracker.poll() == []
        assert multi.duplicates == 2

        # the same code more than 2 s apart: two errors
        clock.advance(2.5)
        with log.open("a") as f:
            f.write(_kernel_line("0000:10:00", 13))
        assert [e.code for e in tracker.poll()] == [13]
        assert tracker.totals() == {(GPU10, 79): 1, (GPU10, 48): 1, (GPU10, 13): 2}
    finally:
        tracker.stop()


def test_multisource_pairs_occurrences_one_to_one(
        nvml: FakeNvml, store: Store, tmp_path: Path) -> None:
    library, state = nvml
    log = tmp_path / "kern.log"
    # the kernel log has XID 13 twice and 31 once; NVML raised 13 once and 31 once
    log.write_text(_kernel_line("0000:10:00", 13) * 2 + _kernel_line("0000:10:00", 31))
    state.write([{"xid_events": "13,31"}])
    clock = FakeClock()
    multi = MultiSource([FileSource(log), NvmlXidSource(str(library))], clock=clock)
    tracker = XidTracker(store, multi, clock, window=3600)
    try:
        tracker.poll()
        assert tracker.totals() == {(GPU10, 13): 2, (GPU10, 31): 1}
        assert multi.duplicates == 2
    finally:
        tracker.stop()


def test_multisource_position_survives_a_restart(
        nvml: FakeNvml, store: Store, tmp_path: Path) -> None:
    library, state = nvml
    log = tmp_path / "kern.log"
    log.write_text(_kernel_line("0000:10:00", 63))
    state.write([{"xid_events": "48"}])
    clock = FakeClock()

    def make() -> XidTracker:
        multi = MultiSource([FileSource(log), NvmlXidSource(str(library))], clock=clock)
        return XidTracker(store, multi, clock, window=3600)

    tracker = make()
    try:
        assert sorted(e.code for e in tracker.poll()) == [48, 63]
    finally:
        tracker.stop()
    with log.open("a") as f:
        f.write(_kernel_line("0000:10:00", 94))
    tracker = make()
    try:
        assert [e.code for e in tracker.poll()] == [94]  # neither 63 nor 48 again
        assert tracker.totals() == {(GPU10, 63): 1, (GPU10, 48): 1, (GPU10, 94): 1}
    finally:
        tracker.stop()


class _Broken:
    name = "broken"

    def read_new(self) -> list[tuple[str, str]]:
        raise KernelLogError("cannot read /dev/kmsg: permission denied")

    def position(self) -> str:
        return ""

    def seek(self, position: str) -> None:
        pass

    def close(self) -> None:
        pass


def test_multisource_one_failing_source_does_not_lose_the_others(tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_text(_kernel_line("0000:10:00", 79))
    multi = MultiSource([_Broken(), FileSource(log)], clock=FakeClock())
    lines = multi.read_new()
    assert _xids(lines) == [(GPU10, 79)]
    assert multi.errors == {"broken": "cannot read /dev/kmsg: permission denied"}
    with pytest.raises(KernelLogError, match="broken: cannot read /dev/kmsg"):
        multi.read_new()  # nothing else to return: the error shows
    multi.close()


def test_multisource_rejects_duplicate_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct"):
        MultiSource([FileSource(tmp_path / "a"), FileSource(tmp_path / "a")])
    with pytest.raises(ValueError, match="at least one"):
        MultiSource([])
