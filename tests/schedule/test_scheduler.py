"""The scheduler on a fake clock: slots, jitter, catch-up, retries, windows, lease, recovery."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest

from swarm_maint.schedule.cron import CronSpec
from swarm_maint.schedule.history import JobHistory
from swarm_maint.schedule.job import Job, JobOutcome, JobRun
from swarm_maint.schedule.lease import Lease, process_identity
from swarm_maint.schedule.metrics import ScheduleCollector
from swarm_maint.schedule.scheduler import Scheduler
from swarm_maint.schedule.windows import UsageGate, Window, Windows
from swarm_maint.store import Store
from tests.fake_clock import FakeClock

# 2027-01-15 00:00:00 UTC, a Friday
T0 = 1_800_000_000.0 - (1_800_000_000.0 % 86400)


def cron(expr: str) -> CronSpec:
    return CronSpec(expr, UTC)


class Recorder:
    """An action that records its runs and answers with a programmed outcome."""

    def __init__(self, *outcomes: str) -> None:
        self.outcomes = list(outcomes)
        self.runs: list[JobRun] = []

    def __call__(self, run: JobRun) -> JobOutcome:
        self.runs.append(run)
        status = self.outcomes.pop(0) if self.outcomes else "succeeded"
        return JobOutcome(status, f"{status} #{len(self.runs)}")  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


def make(store: Store, clock: FakeClock, *jobs: Job, **kw: object) -> Scheduler:
    kw.setdefault("start_delay", 10.0)
    return Scheduler(list(jobs), store, clock, inline=True, **kw)  # type: ignore[arg-type]


def step(sched: Scheduler, clock: FakeClock, seconds: float, every: float = 5.0) -> None:
    """Move the clock on in small steps, ticking at each."""
    end = clock.now + seconds
    while clock.now < end:
        clock.advance(min(every, end - clock.now))
        sched.tick()


def test_first_start_runs_once_after_the_start_delay_then_on_the_cron_slots(store):
    clock = FakeClock(T0 + 3600 * 5 + 120)  # 05:02
    rec = Recorder()
    sched = make(store, clock, Job("h", "test", "", cron("0 * * * *"), rec, jitter=0))
    sched.prepare()
    sched.tick()
    assert rec.runs == []  # the start delay first
    step(sched, clock, 10)
    assert [r.trigger for r in rec.runs] == ["catch-up"]
    step(sched, clock, 3600 - 200, every=60)  # to 05:58:50
    assert len(rec.runs) == 1
    step(sched, clock, 200, every=10)  # past 06:00
    assert [r.trigger for r in rec.runs] == ["catch-up", "schedule"]
    runs = JobHistory(store).runs("h")
    assert runs[0].slot == T0 + 6 * 3600
    assert runs[1].slot == T0 + 5 * 3600
    assert [r.status for r in runs] == ["succeeded", "succeeded"]
    assert runs[0].ended is not None and runs[0].started is not None


def test_jitter_is_a_stable_share_per_node_that_spreads_a_fleet(store, tmp_path):
    clock = FakeClock(T0 + 600)

    def due(node: str, st: Store) -> float:
        job = Job("backup:data", "backup", "", cron("0 3 * * *"), Recorder(), jitter=1800,
                  catch_up=False)
        s = make(st, clock, job, node_name=node)
        s.prepare()
        return s.next_due()["backup:data"]

    slot = T0 + 3 * 3600
    a = due("node-a", store)
    assert slot <= a < slot + 1800
    assert due("node-a", store) == a  # the same node keeps its time
    others = {due(f"node-{i}", Store(tmp_path / f"s{i}.db")) for i in range(8)}
    assert len(others) == 8 and all(slot <= d < slot + 1800 for d in others)
    assert max(others) - min(others) > 300  # spread, not bunched


def test_slots_missed_while_the_agent_was_down_are_caught_up_once(store):
    clock = FakeClock(T0 + 3600 + 5)
    rec = Recorder()
    job = Job("h", "test", "", cron("0 * * * *"), rec, jitter=0)
    s1 = make(store, clock, job)
    s1.prepare()
    step(s1, clock, 20)
    assert len(rec.runs) == 1
    # the agent is down for five hours and seven slots pass
    clock.advance(7 * 3600)
    s2 = make(store, clock, job)
    s2.prepare()
    step(s2, clock, 60)
    assert [r.trigger for r in rec.runs] == ["catch-up", "catch-up"]
    # after that, the next run is the next slot, not the missed ones
    assert s2.next_due()["h"] == T0 + 9 * 3600
    step(s2, clock, 600, every=30)
    assert len(rec.runs) == 2


def test_no_catch_up_when_the_job_says_so(store):
    clock = FakeClock(T0 + 3600 + 5)
    rec = Recorder()
    s = make(store, clock, Job("h", "test", "", cron("0 * * * *"), rec, jitter=0,
                               catch_up=False))
    s.prepare()
    step(s, clock, 600, every=30)
    assert rec.runs == []


def test_a_failed_run_is_retried_with_doubling_backoff_for_the_same_slot(store):
    clock = FakeClock(T0 + 1800)
    rec = Recorder("failed", "failed", "succeeded")
    job = Job("b", "test", "", cron("0 * * * *"), rec, jitter=0, retries=2, retry_backoff=60,
              catch_up=False)
    s = make(store, clock, job)
    s.prepare()
    step(s, clock, 1800, every=5)  # to 01:00:00: first attempt
    assert len(rec.runs) == 1
    step(s, clock, 59)
    assert len(rec.runs) == 1
    step(s, clock, 2)  # 60 s after the failure
    assert len(rec.runs) == 2
    step(s, clock, 115)
    assert len(rec.runs) == 2
    step(s, clock, 10)  # 120 s after the second failure
    runs = list(reversed(JobHistory(store).runs("b")))
    assert [(r.trigger, r.attempt, r.status) for r in runs] == [
        ("schedule", 1, "failed"), ("retry", 2, "failed"), ("retry", 3, "succeeded")]
    assert {r.slot for r in runs} == {T0 + 3600}
    st = JobHistory(store).state("b", clock.now)
    assert st.done_slot == T0 + 3600 and st.last_success == runs[-1].ended


def test_retries_run_out_and_the_job_waits_for_its_next_slot(store):
    clock = FakeClock(T0 + 3590)
    rec = Recorder("failed", "failed")
    job = Job("b", "test", "", cron("0 * * * *"), rec, jitter=0, retries=1, retry_backoff=30,
              catch_up=False)
    s = make(store, clock, job)
    s.prepare()
    step(s, clock, 200)
    assert [r.status for r in JobHistory(store).runs("b")] == ["failed", "failed"]
    assert s.next_due()["b"] == T0 + 2 * 3600
    st = JobHistory(store).state("b", clock.now)
    assert st.done_slot == T0 + 3600 and st.last_success is None


def test_an_action_that_raises_is_a_failed_run_with_the_error(store):
    from swarm_maint.errors import StateError

    def broken(run: JobRun) -> JobOutcome:
        raise StateError("disk full")

    clock = FakeClock(T0)
    s = make(store, clock, Job("x", "test", "", cron("0 * * * *"), broken, retries=0))
    s.prepare()
    step(s, clock, 20)
    [run] = JobHistory(store).runs("x")
    assert (run.status, run.summary) == ("failed", "disk full")


def window_job(rec: Recorder) -> Job:
    # the weekly update: Sunday 02:00, inside the nightly 01:00-06:00 window
    return Job("system-updates", "updates", "", cron("0 2 * * 0"), rec, jitter=0,
               window=True, catch_up=False)


def window_sched(store: Store, clock: FakeClock, rec: Recorder,
                 util: list[float | None]) -> Scheduler:
    return make(store, clock, window_job(rec),
                windows=Windows([Window(cron("0 1 * * *"), 5 * 3600)]),
                gate=UsageGate(0.10, 900), utilization=lambda: util[0])


SUNDAY = T0 + 2 * 86400  # 2027-01-17 00:00 UTC


def test_a_window_job_waits_for_low_gpu_usage_inside_the_window(store):
    clock = FakeClock(SUNDAY + 3600)  # 01:00, the window is open
    rec = Recorder()
    util: list[float | None] = [0.95]
    s = window_sched(store, clock, rec, util)
    s.prepare()
    step(s, clock, 3600 + 10)  # 02:00:10, due, GPUs busy
    assert rec.runs == []
    [j] = [j for j in s.statuses() if j["name"] == "system-updates"]
    assert j["state"] == "waiting" and "95%" in j["reason"]
    [row] = JobHistory(store).runs("system-updates")
    assert row.status == "waiting" and "GPU utilization 95%" in row.summary
    util[0] = 0.03
    step(s, clock, 600)
    assert rec.runs == []  # not yet: under the threshold for 10 of the 15 minutes
    util[0] = 0.5  # a burst resets the count
    step(s, clock, 5)
    util[0] = 0.02
    step(s, clock, 890)
    assert rec.runs == []
    step(s, clock, 20)
    assert len(rec.runs) == 1
    [row] = JobHistory(store).runs("system-updates")
    assert row.status == "succeeded" and row.slot == SUNDAY + 2 * 3600


def test_a_window_job_is_missed_when_the_window_closes_first(store):
    clock = FakeClock(SUNDAY + 3600 + 1800)
    rec = Recorder()
    s = window_sched(store, clock, rec, [0.9])
    coll = ScheduleCollector(s)
    s.prepare()
    step(s, clock, 5 * 3600, every=30)  # past 06:00
    assert rec.runs == []
    [row] = JobHistory(store).runs("system-updates")
    assert row.status == "missed"
    assert "window closed" in row.summary and "90%" in row.summary
    samples = {(m.name, s.labels.get("job")): s.value for m in coll.collect()
               for s in m.samples}
    assert samples[("swarm_job_missed", "system-updates")] == 1.0
    assert s.next_due()["system-updates"] == SUNDAY + 7 * 86400 + 2 * 3600


def test_a_window_job_due_outside_a_window_waits_for_the_next_one(store):
    # due Saturday 12:00, outside the nightly window: waits until Sunday 01:00
    clock = FakeClock(T0 + 86400 + 11 * 3600)
    rec = Recorder()
    job = Job("diagnostics", "health", "", cron("0 12 * * 6"), rec, jitter=0, window=True,
              catch_up=False)
    s = make(store, clock, job, windows=Windows([Window(cron("0 1 * * *"), 5 * 3600)]),
             gate=UsageGate(0.10, 900), utilization=lambda: None)  # no GPUs: idle
    s.prepare()
    step(s, clock, 3600 + 30, every=30)
    [j] = s.statuses()
    assert j["state"] == "waiting" and "maintenance window" in j["reason"]
    step(s, clock, 13 * 3600 - 60, every=60)  # to Sunday 00:59 or so
    assert rec.runs == []
    step(s, clock, 60 + 900 + 60, every=10)  # window opens, 15 idle minutes pass
    assert len(rec.runs) == 1


def test_jobs_that_need_the_lease_wait_for_it_and_then_run(store):
    clock = FakeClock(T0 + 3590)
    rec = Recorder()
    job = Job("backup:data", "backup", "", cron("0 * * * *"), rec, jitter=0, catch_up=False)
    lease = Lease(store, clock, ttl=120)
    s = make(store, clock, job, lease=lease)
    s.prepare()
    assert lease.try_acquire("cli: update apply") is not None
    step(s, clock, 60)
    assert rec.runs == []
    [j] = s.statuses()
    assert "maintenance lease, held by cli: update apply" in j["reason"]
    lease.renew("cli: update apply")
    lease.release("cli: update apply")
    step(s, clock, 5)
    assert len(rec.runs) == 1
    assert lease.holder() is None  # given back after the run


def test_a_run_is_missed_when_the_lease_stays_busy_too_long(store):
    clock = FakeClock(T0 + 3590)
    rec = Recorder()
    job = Job("backup:data", "backup", "", cron("0 * * * *"), rec, jitter=0, catch_up=False)
    lease = Lease(store, clock, ttl=10_000)
    s = make(store, clock, job, lease=lease, lease_wait=600)
    s.prepare()
    lease.try_acquire("system-updates")
    step(s, clock, 700, every=10)
    assert rec.runs == []
    [row] = JobHistory(store).runs()
    assert row.status == "missed" and "system-updates" in row.summary


def test_jobs_without_the_lease_run_beside_a_lease_holder(store):
    clock = FakeClock(T0 + 3590)
    rec = Recorder()
    s = make(store, clock, Job("health", "health", "", cron("0 * * * *"), rec, jitter=0,
                               lease=False, catch_up=False))
    s.prepare()
    Lease(store, clock).try_acquire("backup:data")
    step(s, clock, 20)
    assert len(rec.runs) == 1


def test_a_lease_expires_when_its_holder_stops_renewing(store):
    clock = FakeClock(T0)
    lease = Lease(store, clock, ttl=120)
    # a holder on another host: its liveness cannot be checked, only its expiry
    with store.transaction() as conn:
        conn.execute("INSERT INTO leases VALUES ('maintenance', 'backup:data',"
                     " 'other-host:1:1.00', ?, ?)", (clock.now, clock.now + 120))
    assert lease.try_acquire("health") is None
    clock.advance(119)
    assert lease.holder() is not None
    clock.advance(2)
    assert lease.holder() is None
    assert lease.try_acquire("health") is not None


def test_a_lease_held_by_a_killed_process_is_free_at_once(store, tmp_path):
    script = (
        "import sys, time\n"
        "from swarm_maint.store import Store\n"
        "from swarm_maint.clock import SystemClock\n"
        "from swarm_maint.schedule.lease import Lease\n"
        "lease = Lease(Store(sys.argv[1]), SystemClock(), ttl=3600)\n"
        "with lease.hold('backup:data'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "state.db")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        from swarm_maint.clock import SystemClock

        lease = Lease(store, SystemClock(), ttl=3600)
        holder = lease.holder()
        assert holder is not None and holder.owner == "backup:data"
        assert f":{proc.pid}:" in holder.holder
        assert lease.try_acquire("system-updates") is None
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    assert lease.holder() is None  # the pid is gone: free long before the hour-long expiry
    assert lease.try_acquire("system-updates") is not None


def test_a_run_cut_off_by_a_dead_process_is_recorded_and_runs_again(store):
    clock = FakeClock(T0 + 3600 + 600)
    hist = JobHistory(store)
    hist.state("backup:data", T0)
    dead = subprocess.run([sys.executable, "-c", "from swarm_maint.schedule.lease import "
                           "process_identity as p; print(p())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    run_id = hist.start("backup:data", T0 + 3600, "schedule", 1, T0 + 3600, dead)
    rec = Recorder()
    s = make(store, clock, Job("backup:data", "backup", "", cron("0 * * * *"), rec, jitter=0))
    [cut] = s.prepare()
    assert cut.id == run_id and cut.status == "interrupted"
    step(s, clock, 15)
    assert [(r.trigger, r.job) for r in rec.runs] == [("recovery", "backup:data")]
    runs = hist.runs("backup:data")
    assert [(r.status, r.trigger, r.slot) for r in runs] == [
        ("succeeded", "recovery", T0 + 3600), ("interrupted", "schedule", T0 + 3600)]


def test_a_run_of_a_live_process_is_left_alone(store):
    clock = FakeClock(T0 + 100)
    hist = JobHistory(store)
    hist.start("backup:data", None, "cli", 1, T0, process_identity())
    s = make(store, clock, Job("backup:data", "backup", "", cron("0 * * * *"), Recorder()))
    assert s.prepare() == []
    assert hist.runs()[0].status == "running"


def test_a_run_asked_for_by_hand_goes_first_and_the_schedule_resumes(store):
    clock = FakeClock(T0 + 1000)
    rec = Recorder()
    s = make(store, clock, Job("h", "test", "", cron("0 * * * *"), rec, jitter=0,
                               catch_up=False))
    s.prepare()
    s.request("h", "api")
    s.tick()
    assert [(r.trigger) for r in rec.runs] == ["api"]
    assert JobHistory(store).runs("h")[0].slot is None
    assert s.next_due()["h"] == T0 + 3600
    from swarm_maint.schedule.errors import ScheduleError

    with pytest.raises(ScheduleError, match="no job named 'nope'"):
        s.request("nope")


def test_disabled_jobs_do_not_run_but_can_be_run_by_hand(store):
    clock = FakeClock(T0 + 1000)
    rec = Recorder()
    s = make(store, clock, Job("h", "test", "", cron("* * * * *"), rec, enabled=False))
    s.prepare()
    step(s, clock, 600, every=30)
    assert rec.runs == []
    rec2 = s.run_now("h", trigger="cli")
    assert rec2.status == "succeeded" and rec2.trigger == "cli"
    [j] = s.statuses()
    assert j["state"] == "disabled" and j["next_run"] is None


def test_run_now_refuses_while_another_holds_the_lease(store):
    from swarm_maint.schedule.errors import LeaseBusyError

    clock = FakeClock(T0)
    s = make(store, clock, Job("backup:data", "backup", "", cron("0 3 * * *"), Recorder()))
    s.lease.try_acquire("system-updates")
    with pytest.raises(LeaseBusyError, match="held by system-updates"):
        s.run_now("backup:data")
    assert JobHistory(store).runs() == []


def test_close_records_runs_still_going_as_interrupted(store):
    clock = FakeClock(T0 + 3590)
    s = make(store, clock, window_job(Recorder()),
             windows=Windows([Window(cron("0 1 * * *"), 5 * 3600)]))
    s.prepare()
    s.request("system-updates")  # by hand: no window, so it runs inline at once
    s.tick()
    # a waiting run: a lease job blocked by another holder
    s.lease.try_acquire("other")
    s.request("system-updates")
    s.tick()
    assert JobHistory(store).runs()[0].status == "waiting"
    s.close()
    assert JobHistory(store).runs()[0].status == "interrupted"


def test_metrics_describe_runs_backups_and_the_lease(store):
    clock = FakeClock(T0 + 1000)
    ok, bad = Recorder("succeeded"), Recorder("failed")
    b = Job("backup:models", "backup", "", cron("0 3 * * *"), ok, jitter=0,
            labels={"backup_job": "models"}, max_age=86400 + 21600)
    h = Job("health", "health", "", cron("0 * * * *"), bad, jitter=0, retries=0, lease=False)
    s = make(store, clock, b, h)
    coll = ScheduleCollector(s)
    s.prepare()
    step(s, clock, 20)
    clock.advance(5)
    out = {(sm.name, tuple(sorted(sm.labels.items()))): sm.value
           for m in coll.collect() for sm in m.samples}

    def get(name: str, **labels: str) -> float:
        return out[(name, tuple(sorted(labels.items())))]

    assert get("swarm_job_last_run_success", job="backup:models", kind="backup") == 1
    assert get("swarm_job_last_run_success", job="health", kind="health") == 0
    assert get("swarm_job_runs_total", job="health", kind="health", status="failed") == 1
    assert get("swarm_backup_last_run_success", job="models") == 1
    ended = JobHistory(store).runs("backup:models")[0].ended
    assert get("swarm_backup_last_success_timestamp_seconds", job="models") == ended
    assert get("swarm_backup_max_age_seconds", job="models") == 86400 + 21600
    assert get("swarm_job_next_run_timestamp_seconds", job="backup:models",
               kind="backup") == T0 + 3 * 3600
    assert ("swarm_maintenance_lease_held", (("owner", "x"),)) not in out
    s.lease.try_acquire("x")  # by another process: seen within the 10 s the reads are kept
    clock.advance(11)
    held = {(sm.name, sm.labels.get("owner")): sm.value for m in coll.collect()
            for sm in m.samples}
    assert held[("swarm_maintenance_lease_held", "x")] == 1


def test_a_failed_attempt_that_is_retried_does_not_count_as_the_jobs_result(store):
    clock = FakeClock(T0 + 3590)
    rec = Recorder("failed", "succeeded")
    s = make(store, clock, Job("b", "backup", "", cron("0 * * * *"), rec, jitter=0,
                               retries=1, retry_backoff=60, catch_up=False,
                               labels={"backup_job": "b"}))
    coll = ScheduleCollector(s)
    s.prepare()
    step(s, clock, 20)  # the first attempt failed, a retry is due in a minute

    def samples() -> dict[str, float]:
        return {sm.name: sm.value for m in coll.collect() for sm in m.samples
                if sm.labels.get("job") == "b" and "last_run_success" in sm.name}

    assert samples() == {}  # no alert for a failure that is still being retried
    step(s, clock, 60)
    assert samples() == {"swarm_job_last_run_success": 1.0,
                         "swarm_backup_last_run_success": 1.0}


def test_quiet_time_counts_only_while_a_job_waits_for_it(store):
    clock = FakeClock(SUNDAY + 3600)
    util: list[float | None] = [0.0]
    rec = Recorder()
    s = window_sched(store, clock, rec, util)
    s.prepare()
    s.gate.observe(clock.now - 7 * 86400, 0.0)  # quiet a week ago, nobody watching since
    step(s, clock, 3600 + 10)  # 02:00:10: due
    step(s, clock, 60)
    assert rec.runs == []  # the gate starts counting when the job starts waiting
    step(s, clock, 900)
    assert len(rec.runs) == 1


def test_a_job_can_ask_to_run_right_after_start(store):
    clock = FakeClock(T0 + 1000)
    rec = Recorder()
    job = Job("security-updates", "updates", "", cron("0 * * * *"), rec, jitter=0,
              catch_up=False, urgent_at_start=lambda: True)  # an update run is cut off
    s = make(store, clock, job)
    s.prepare()
    step(s, clock, 15)
    assert [r.trigger for r in rec.runs] == ["recovery"]


def test_the_history_keeps_a_bounded_number_of_runs_per_job(store):
    hist = JobHistory(store)
    for i in range(12):
        run_id = hist.start("h", None, "cli", 1, T0 + i, "x")
        hist.finish(run_id, "succeeded", "", {}, T0 + i)
    other = hist.start("o", None, "cli", 1, T0, "x")
    assert hist.prune("h", 5) == 7
    assert [r.started for r in hist.runs("h")] == [T0 + i for i in range(11, 6, -1)]
    assert hist.get(other) is not None
    assert hist.prune("h", 5) == 0


def test_asking_twice_says_the_run_is_queued(store):
    from swarm_maint.schedule.errors import ScheduleError

    clock = FakeClock(T0 + 1000)
    s = make(store, clock, Job("h", "test", "", cron("0 * * * *"), Recorder(),
                               catch_up=False))
    s.prepare()
    s.request("h")
    with pytest.raises(ScheduleError, match="job h is already queued"):
        s.request("h")


def test_when_the_lease_comes_free_the_most_urgent_waiting_run_gets_it(store):
    clock = FakeClock(T0 + 3590)
    order: list[str] = []

    def record(name: str) -> Recorder:
        rec = Recorder()
        real = rec.__call__

        def act(run: JobRun) -> JobOutcome:
            order.append(name)
            return real(run)

        return act  # type: ignore[return-value]

    jobs = [Job("backup-verify", "backup-verify", "", cron("0 * * * *"), record("verify"),
                jitter=0, catch_up=False, priority=60),
            Job("backup:data", "backup", "", cron("0 * * * *"), record("backup"), jitter=0,
                catch_up=False, priority=40),
            Job("security-updates", "updates", "", cron("0 * * * *"), record("security"),
                jitter=0, catch_up=False, priority=10)]
    s = make(store, clock, *jobs)
    s.prepare()
    s.lease.try_acquire("system-updates")  # a long run holds the lease at the top of the hour
    step(s, clock, 60)
    assert order == []
    s.lease.release("system-updates")
    step(s, clock, 10)
    assert order == ["security", "backup", "verify"]


def test_a_job_switched_off_and_never_run_exports_nothing(store):
    clock = FakeClock(T0 + 1000)
    off = Job("diagnostics", "health", "", cron("0 4 * * 0"), Recorder(), enabled=False)
    on = Job("health", "health", "", cron("0 * * * *"), Recorder(), lease=False,
             catch_up=False)
    s = make(store, clock, off, on)
    coll = ScheduleCollector(s)
    s.prepare()
    jobs = {sm.labels.get("job") for m in coll.collect() for sm in m.samples}
    assert jobs == {"health"}
    s.run_now("diagnostics")  # run by hand once: now it has something to say
    coll.invalidate()
    jobs = {sm.labels.get("job") for m in coll.collect() for sm in m.samples}
    assert jobs == {"health", "diagnostics"}


@pytest.mark.expect_logged_errors
def test_a_pass_that_raises_does_not_end_the_scheduler(store, monkeypatch):
    """One unforeseen error (a library bug, a broken schedule) must not stop every later
    job while the agent keeps serving."""
    import threading

    clock = FakeClock(T0)
    sched = make(store, clock)
    calls: list[int] = []
    stop = threading.Event()

    def tick() -> float:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        stop.set()
        return 0.0

    monkeypatch.setattr(sched, "tick", tick)
    monkeypatch.setattr("swarm_maint.schedule.scheduler._POLL_WAITING", 0.0)
    sched.run(stop)
    assert len(calls) == 2
