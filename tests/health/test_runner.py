"""The runner: hysteresis, timeouts, persistence, exit codes, metrics."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm_maint.config import CheckOverride, HealthConfig
from swarm_maint.health.check import CheckResult, Status
from swarm_maint.health.runner import HealthRunner, exit_code
from swarm_maint.store import Store
from tests.fake_clock import FakeClock


class Scripted:
    """A check whose next statuses the test decides."""

    level = 1
    interval = 30.0
    timeout = 1.0

    def __init__(self, name: str, statuses: list[Status]) -> None:
        self.name = name
        self.statuses = list(statuses)
        self.runs = 0

    def run(self) -> CheckResult:
        self.runs += 1
        st = self.statuses.pop(0) if self.statuses else "OK"
        return CheckResult(self.name, st, f"{self.name} is {st}",
                           None if st == "OK" else "investigate", {"run": self.runs})


class Hanging:
    name = "hangs"
    level = 1
    interval = 30.0
    timeout = 0.2

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def run(self) -> CheckResult:
        self.calls += 1
        self.release.wait(10)
        return CheckResult(self.name, "OK", "finally")


class Raising:
    name = "raises"
    level = 1
    interval = 30.0
    timeout = 1.0

    def run(self) -> CheckResult:
        raise RuntimeError("probe exploded")


def test_hysteresis_trips_after_n_and_clears_after_m(tmp_path: Path) -> None:
    cfg = HealthConfig(failures_to_trip=2, passes_to_clear=3)
    check = Scripted("disk", ["WARNING", "OK", "WARNING", "CRITICAL", "OK", "OK", "WARNING",
                              "OK", "OK", "OK"])
    r = HealthRunner([check], cfg, Store(tmp_path / "s.db"), FakeClock())
    seen = [r.record(check.run()).status for _ in range(10)]
    assert seen == ["OK", "OK", "OK", "CRITICAL", "CRITICAL", "CRITICAL", "CRITICAL",
                    "CRITICAL", "CRITICAL", "OK"]
    hist = r.history()
    assert [(h["from"], h["to"]) for h in reversed(hist)] == [("OK", "CRITICAL"),
                                                              ("CRITICAL", "OK")]


@pytest.mark.expect_logged_errors
def test_transition_hooks_run_on_status_changes_only(tmp_path: Path) -> None:
    check = Scripted("disk", ["CRITICAL", "CRITICAL", "OK", "OK", "OK"])
    r = HealthRunner([check], HealthConfig(passes_to_clear=2), Store(tmp_path / "s.db"),
                     FakeClock())
    seen: list[str] = []
    r.on_transition.append(lambda c: seen.append(c.status))

    def broken(_c: object) -> None:
        raise RuntimeError("consumer bug")
    r.on_transition.insert(0, broken)  # a failing hook neither stops checks nor others
    for _ in range(5):
        r.record(check.run())
    assert seen == ["CRITICAL", "OK"]


def test_per_check_override(tmp_path: Path) -> None:
    cfg = HealthConfig(failures_to_trip=3, checks={"gpu": CheckOverride(failures_to_trip=1)})
    gpu, disk = Scripted("gpu", ["CRITICAL"]), Scripted("disk", ["CRITICAL"])
    r = HealthRunner([gpu, disk], cfg, None, FakeClock())
    assert r.record(gpu.run()).status == "CRITICAL"
    assert r.record(disk.run()).status == "OK"


def test_condition_keeps_the_failing_message_until_it_clears(tmp_path: Path) -> None:
    cfg = HealthConfig(failures_to_trip=1, passes_to_clear=2)
    c = Scripted("x", ["CRITICAL", "OK", "OK"])
    r = HealthRunner([c], cfg, None, FakeClock())
    r.record(c.run())
    cond = r.record(c.run())
    assert cond.status == "CRITICAL"
    assert cond.raw_status == "OK"
    assert cond.message == "x is CRITICAL"
    assert r.record(c.run()).message == "x is OK"


def test_persisted_across_restarts_and_removed_checks_disappear(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    cfg = HealthConfig()
    a, b = Scripted("a", ["CRITICAL"]), Scripted("b", ["WARNING"])
    r = HealthRunner([a, b], cfg, Store(db), FakeClock())
    r.record(a.run())
    r.record(b.run())
    again = HealthRunner([Scripted("a", [])], cfg, Store(db), FakeClock())
    conds = {c.check: c for c in again.snapshot()}
    assert set(conds) == {"a"}  # b is no longer configured: its condition is gone
    assert conds["a"].status == "CRITICAL"
    assert Store(db).query("SELECT check_name FROM health_state") == [("a",)]


def test_hanging_check_times_out_and_is_not_piled_up(tmp_path: Path) -> None:
    h = Hanging()
    r = HealthRunner([h], HealthConfig(), None, FakeClock())
    t0 = time.monotonic()
    res = r.run_check(h)
    assert time.monotonic() - t0 < 2
    assert res is not None
    assert res.status == "UNKNOWN"
    assert "timed out after 0.2s" in res.message
    assert r.run_check(h) is None  # still stuck: not started again
    assert h.calls == 1
    h.release.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and r.run_check(h) is None:
        time.sleep(0.05)
    assert h.calls == 2


def test_raising_check_is_unknown(tmp_path: Path) -> None:
    r = HealthRunner([Raising()], HealthConfig(), None, FakeClock())
    res = r.run_now()
    assert res[0].status == "UNKNOWN"
    assert "probe exploded" in res[0].message


def test_exit_codes() -> None:
    def res(*sts: Status) -> list[CheckResult]:
        return [CheckResult(f"c{i}", s, "") for i, s in enumerate(sts)]

    assert exit_code(res("OK", "OK")) == 0
    assert exit_code(res("OK", "WARNING", "UNKNOWN")) == 1
    assert exit_code(res("WARNING", "CRITICAL")) == 2
    assert exit_code(res("OK", "UNKNOWN")) == 3
    assert exit_code([]) == 0


@contextlib.contextmanager
def running(r: HealthRunner) -> Iterator[None]:
    """The runner's interval loop on a thread of its own for the block."""
    stop = threading.Event()
    t = threading.Thread(target=r.run, args=(stop,))
    t.start()
    try:
        yield
    finally:
        stop.set()
        r.stop()
        t.join(5)


def test_metrics_and_trigger(tmp_path: Path) -> None:
    c = Scripted("gpu_xid", ["OK", "CRITICAL"])
    c.interval = 3600.0
    r = HealthRunner([c], HealthConfig(), None)
    with running(r):
        deadline = time.monotonic() + 5
        while c.runs < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        r.trigger("gpu_xid")  # an event: run now, not in an hour
        while c.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.runs == 2
    fams = {f.name: f for f in r.collector().collect()}
    (sample,) = fams["swarm_health_status"].samples
    assert sample.labels == {"check": "gpu_xid", "action": "investigate"}
    assert sample.value == 2


class Gated(Scripted):
    """A check whose first run waits until the test lets it finish."""

    def __init__(self, name: str, statuses: list[Status]) -> None:
        super().__init__(name, statuses)
        self.started = threading.Event()
        self.release = threading.Event()

    def run(self) -> CheckResult:
        if self.runs == 0:
            self.started.set()
            self.release.wait(5)
        return super().run()


def test_a_trigger_during_a_run_runs_the_check_again_after_it() -> None:
    """An XID that arrives while the XID check is running (it began before the event)
    is not lost: the check runs once more right after, not at its next interval."""
    c = Gated("gpu_xid", ["OK", "CRITICAL"])
    c.interval = 3600.0
    c.timeout = 10.0
    r = HealthRunner([c], HealthConfig(), None)
    with running(r):
        assert c.started.wait(5)
        r.trigger("gpu_xid")  # the first run is still going
        time.sleep(0.2)  # the runner's loop has seen the trigger and found the check busy
        assert c.runs == 0
        c.release.set()
        deadline = time.monotonic() + 5
        while c.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.runs == 2
        time.sleep(0.2)
        assert c.runs == 2  # once more, not again and again
    (cond,) = r.snapshot()
    assert cond.status == "CRITICAL"  # the second run's result, recorded after the first's


@pytest.mark.parametrize("n", [1, 3])
def test_run_now_selects_by_name_and_level(n: int) -> None:
    checks = [Scripted(f"c{i}", []) for i in range(n)]
    active = Scripted("burn", [])
    active.level = 2
    r = HealthRunner([*checks, active], HealthConfig(), None)
    assert {x.check for x in r.run_now()} == {c.name for c in checks}
    assert {x.check for x in r.run_now(level=2)} == {*(c.name for c in checks), "burn"}
    assert [x.check for x in r.run_now(["c0"])] == ["c0"]


def test_active_diagnostics_skipped_when_busy() -> None:
    passive = Scripted("disk", [])
    burn = Scripted("burn", ["CRITICAL"])
    burn.level = 2
    r = HealthRunner([passive, burn], HealthConfig(), None)
    res = {x.check: x for x in r.run_now(level=2, idle=lambda: (False, "GPU 0 at 90%"))}
    assert res["burn"].status == "UNKNOWN"
    assert res["burn"].message == "skipped: GPU 0 at 90%"
    assert burn.runs == 0  # never started under a workload
    assert res["disk"].status == "OK"
    res = {x.check: x for x in r.run_now(level=2, idle=lambda: (True, ""))}
    assert res["burn"].status == "CRITICAL"
    assert burn.runs == 1


def test_gpus_idle_reads_the_frame() -> None:
    from prometheus_client.core import GaugeMetricFamily

    from swarm_maint.health.check import FrameSamples, gpus_idle
    from swarm_maint.monitoring.hub import Frame

    def frame(*utils: float) -> FrameSamples:
        g = GaugeMetricFamily("swarm_gpu_utilization_ratio", "u", labels=["gpu"])
        for i, u in enumerate(utils):
            g.add_metric([str(i)], u)
        return FrameSamples(Frame(1.0, (g,), 1))

    assert gpus_idle(frame()) == (True, "")
    assert gpus_idle(frame(0.0, 0.01)) == (True, "")
    idle, why = gpus_idle(frame(0.0, 0.85))
    assert not idle
    assert why == "node not idle (GPU 1 at 85%); drain it first"
