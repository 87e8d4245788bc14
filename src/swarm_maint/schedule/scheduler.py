"""The agent's scheduler: cron slots, jitter, windows, the lease, retries, catch-up.

Each job moves through ``idle`` → ``waiting`` → ``running`` → ``idle``. ``tick()`` does
one pass at the clock's current time and says how long to sleep; ``run()`` loops it on a
thread. A run is recorded as soon as it falls due (``waiting``: for a window, low GPU
usage or the lease), so `jobs list` and the history show what is pending and why.

Rules:
- a slot is delayed by a stable share of the job's jitter (hash of node, job and slot),
  so a fleet spreads out while a node's own timing stays reproducible;
- a failed run is retried after ``retry_backoff`` (doubling) up to ``retries`` times;
- a window job that does not get its window, and any job that does not get the lease
  within ``lease_wait``, is *missed* and waits for its next slot;
- at start, a slot missed while the agent was down runs once (``catch-up``), and a run
  cut off by a crash or kill runs again (``recovery``): never once per missed slot.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..clock import Clock
from ..durations import format_duration
from ..errors import SwarmMaintError
from ..store import Store
from .errors import ScheduleError
from .history import JobHistory, JobRunRecord
from .job import Job, JobOutcome, JobRun
from .lease import Lease, process_alive, process_identity
from .windows import UsageGate, Windows

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

_POLL_WAITING = 5.0     # how often waiting jobs look at the window, the GPUs and the lease
_MAX_SLEEP = 60.0
KEEP_RUNS = 1000        # runs kept per job in the history (an hourly job: about six weeks)


@dataclass
class _Slot:
    slot: float | None          # the scheduled time this attempt is for (None: by hand)
    due_at: float
    trigger: str
    attempt: int = 1


@dataclass
class _State:
    job: Job
    next: _Slot
    phase: str = "idle"         # idle, waiting, running
    run_id: int | None = None
    current: _Slot | None = None
    window_deadline: float | None = None
    window_opens: float | None = None
    lease_deadline: float = 0.0
    reason: str = ""
    saved: _Slot | None = None  # the scheduled slot a manual run stepped in front of
    finished: threading.Event = field(default_factory=threading.Event)


def _fmt(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M %Z")


class Scheduler:
    def __init__(self, jobs: Sequence[Job], store: Store, clock: Clock, *,
                 windows: Windows | None = None, gate: UsageGate | None = None,
                 lease: Lease | None = None, node_name: str = "",
                 start_delay: float = 30.0, lease_wait: float = 6 * 3600.0,
                 utilization: Callable[[], float | None] | None = None,
                 inline: bool = False) -> None:
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ScheduleError(f"job names must be unique: {names}")
        self.jobs = {j.name: j for j in jobs}
        self.store = store
        self.clock = clock
        self.history = JobHistory(store)
        self.windows = windows or Windows([])
        self.gate = gate or UsageGate(1.0, 0.0)
        self.lease = lease or Lease(store, clock)
        self.node_name = node_name
        self.start_delay = start_delay
        self.lease_wait = lease_wait
        self.utilization = utilization or (lambda: None)
        self.inline = inline        # tests: run actions on the calling thread
        self.stop_event = threading.Event()
        self.on_finish: list[Callable[[JobRunRecord], None]] = []
        self.on_start: list[Callable[[str], None]] = []  # a run took off (with the lease)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._states: dict[str, _State] = {}

    # -- start and stop --------------------------------------------------------------------

    def prepare(self) -> list[JobRunRecord]:
        """Close runs cut off by a dead process and plan every job's first slot; the
        runs found cut off."""
        with self._lock:  # once: the scheduler thread and an early API request may race
            if self._states:
                return []
            return self._prepare()

    def _prepare(self) -> list[JobRunRecord]:
        now = self.clock.time()
        cut_off = []
        for rec in self.history.unfinished():
            if process_alive(rec.holder):
                continue  # e.g. `jobs run` in another process
            cut_off.append(self.history.finish(
                rec.id, "interrupted", f"cut off while {rec.status}: the process running it "
                "stopped; it runs again", rec.details, now))
            log.warning("job %s: run %d was cut off (%s); it runs again", rec.job, rec.id,
                        rec.status)
        latest = self.history.latest_per_job()
        for job in self.jobs.values():
            st = self.history.state(job.name, now)
            prev = job.schedule.prev_at_or_before(now)
            last = latest.get(job.name)
            if (last is not None and last.status == "interrupted" and last.slot is not None
                    and (st.done_slot is None or last.slot > st.done_slot)):
                nxt = _Slot(last.slot, now + self.start_delay, "recovery")
            elif job.urgent_at_start is not None and job.urgent_at_start():
                nxt = _Slot(prev, now + self.start_delay, "recovery")
            elif job.catch_up and (st.done_slot is None or st.done_slot < prev):
                spread = self._share(job, prev) * min(job.jitter, self.start_delay)
                nxt = _Slot(prev, now + self.start_delay + spread, "catch-up")
            else:
                nxt = self._slot_after(job, now)
            self._states[job.name] = _State(job, nxt)
        return cut_off

    def close(self) -> None:
        """The agent is stopping: runs still going are recorded as interrupted (a run that
        still finishes before the process exits records its real result)."""
        with self._lock:
            if self.stop_event.is_set():
                return  # closed already (the thread and the agent both close)
            self.stop_event.set()
        self._wake.set()
        now = self.clock.time()
        with self._lock:
            for st in self._states.values():
                if st.phase in ("waiting", "running") and st.run_id is not None:
                    self.history.finish(st.run_id, "interrupted", "the agent stopped during "
                                        f"the run ({st.phase}); it runs again at the next start",
                                        {}, now)

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set (the agent's thread)."""
        if not self._states:
            self.prepare()
        try:
            while not stop.is_set() and not self.stop_event.is_set():
                try:
                    wait = self.tick()
                except SwarmMaintError as exc:
                    log.warning("scheduler: %s", exc)
                    wait = _POLL_WAITING
                except Exception:
                    # a bug or an unforeseen library error in one pass must not end every
                    # later job: log it and try again
                    log.exception("scheduler: a pass failed; retrying")
                    wait = _POLL_WAITING
                self._wake.wait(max(0.05, min(wait, _MAX_SLEEP)))
                self._wake.clear()
        finally:
            self.close()

    def wake(self) -> None:
        self._wake.set()

    # -- one pass ----------------------------------------------------------------------------

    def tick(self) -> float:
        """Start what is due, move waiting runs on; seconds until the next thing to do."""
        now = self.clock.time()
        with self._lock:
            # by priority: when the lease comes free, security patches go before a backup
            states = sorted(self._states.values(), key=lambda st: st.job.priority)
            if any(st.phase == "waiting" and st.job.window for st in states):
                self.gate.observe(now, self.utilization())
            else:  # quiet time only counts while a job watches for it
                self.gate.reset()
            wait = _MAX_SLEEP
            for st in states:
                if st.phase == "idle" and now >= st.next.due_at and (
                        st.job.enabled or st.next.slot is None):
                    self._begin(st, now)
                if st.phase == "waiting":
                    self._try_start(st, now)
                if st.phase == "waiting":
                    wait = min(wait, _POLL_WAITING)
                elif st.phase == "idle" and (st.job.enabled or st.next.slot is None):
                    wait = min(wait, st.next.due_at - now)
        return max(0.0, wait)

    def _begin(self, st: _State, now: float) -> None:
        cur = st.current = st.next
        st.run_id = self.history.start(st.job.name, cur.slot, cur.trigger, cur.attempt, now,
                                       process_identity(), status="waiting")
        st.phase = "waiting"
        st.reason = ""
        st.lease_deadline = now + self.lease_wait
        st.window_deadline = st.window_opens = None
        if st.job.window and cur.slot is not None:
            span = self.windows.next_open(now)
            if span is None:  # no windows configured: wait at most until the next slot
                st.window_deadline = st.job.schedule.next_after(max(now, cur.slot))
            else:
                st.window_opens, st.window_deadline = span

    def _try_start(self, st: _State, now: float) -> None:
        job, cur = st.job, st.current
        assert cur is not None and st.run_id is not None
        if job.window and cur.slot is not None:
            assert st.window_deadline is not None
            if now >= st.window_deadline:
                where = ("the window closed" if st.window_opens is not None
                         else "its next slot came")
                self._missed(st, now, f"missed: {where} before the node was quiet "
                             f"({self.gate.reason(now)})")
                return
            if st.window_opens is not None and now < st.window_opens:
                self._wait(st, f"waiting for the maintenance window at {_fmt(st.window_opens)}")
                return
            if not self.gate.satisfied(now):
                self._wait(st, f"waiting for low usage: {self.gate.reason(now)}")
                return
        if job.lease and self.lease.try_acquire(job.name) is None:
            holder = self.lease.holder()
            who = holder.describe() if holder is not None else "another process"
            if now >= st.lease_deadline:
                self._missed(st, now, f"missed: the maintenance lease stayed with {who} for "
                             f"{format_duration(self.lease_wait)}")
            else:
                self._wait(st, f"waiting for the maintenance lease, held by {who}")
            return
        st.phase = "running"
        st.reason = ""
        st.finished.clear()
        self.history.update(st.run_id, status="running", summary="", started=now)
        for cb in self.on_start:
            cb(job.name)
        if self.inline:
            self._execute(st)
        else:
            threading.Thread(target=self._execute, args=(st,), daemon=True,
                             name=f"job-{job.name}").start()

    def _wait(self, st: _State, reason: str) -> None:
        if reason != st.reason and st.run_id is not None:
            st.reason = reason
            self.history.update(st.run_id, summary=reason)

    def _execute(self, st: _State) -> None:
        job, cur = st.job, st.current
        assert cur is not None
        run = JobRun(job.name, cur.trigger, cur.attempt, self.stop_event)
        renew = (self.lease.keep_renewed(job.name) if job.lease
                 else contextlib.nullcontext())
        try:
            with renew:
                outcome = job.action(run)
        except SwarmMaintError as exc:
            outcome = JobOutcome("failed", str(exc))
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job.name)
            outcome = JobOutcome("failed", f"internal error: {exc!r}")
        self._finish(st, outcome)

    # -- endings -----------------------------------------------------------------------------

    def _finish(self, st: _State, outcome: JobOutcome) -> None:
        now = self.clock.time()
        job, cur = st.job, st.current
        assert cur is not None and st.run_id is not None
        with self._lock:
            retry = (outcome.status == "failed" and cur.attempt <= job.retries
                     and not self.stop_event.is_set())
            if outcome.status == "interrupted":  # not done: recovered at the next start
                self.history.finish(st.run_id, "interrupted", outcome.summary,
                                    outcome.details, now)
                self._to_idle(st)
                return
            rec = self.history.finish(st.run_id, outcome.status, outcome.summary,
                                      outcome.details, now, final=not retry)
            self.history.prune(job.name, KEEP_RUNS)
            level = logging.INFO if outcome.status != "failed" else logging.WARNING
            log.log(level, "job %s %s: %s", job.name, outcome.status, outcome.summary)
            if retry:
                delay = job.retry_backoff * 2 ** (cur.attempt - 1)
                st.next = _Slot(cur.slot, now + delay, "retry" if cur.slot is not None
                                else cur.trigger, cur.attempt + 1)
            else:
                self.history.mark_done(job.name, cur.slot,
                                       now if outcome.status == "succeeded" else None)
                st.next = self._advance(st, now)
            self._to_idle(st)
        self._wake.set()
        for cb in self.on_finish:
            cb(rec)

    def _missed(self, st: _State, now: float, reason: str) -> None:
        cur = st.current
        assert cur is not None and st.run_id is not None
        rec = self.history.finish(st.run_id, "missed", reason, {}, now)
        log.warning("job %s %s", st.job.name, reason)
        self.history.mark_done(st.job.name, cur.slot, None)
        st.next = self._advance(st, now)
        self._to_idle(st)
        for cb in self.on_finish:
            cb(rec)

    @staticmethod
    def _to_idle(st: _State) -> None:
        st.phase, st.current, st.run_id = "idle", None, None
        st.finished.set()

    def _advance(self, st: _State, now: float) -> _Slot:
        if st.saved is not None:  # a manual run is over: the scheduled slot is next again
            saved, st.saved = st.saved, None
            return saved
        return self._slot_after(st.job, now)

    # -- slots -------------------------------------------------------------------------------

    def _share(self, job: Job, slot: float) -> float:
        """A stable number in [0, 1) for this node, job and slot."""
        h = hashlib.blake2b(f"{self.node_name}|{job.name}|{slot:.0f}".encode(), digest_size=8)
        return int.from_bytes(h.digest(), "big") / 2**64

    def _slot_after(self, job: Job, now: float) -> _Slot:
        slot = job.schedule.next_after(now)
        return _Slot(slot, slot + self._share(job, slot) * job.jitter, "schedule")

    # -- by hand -----------------------------------------------------------------------------

    def request(self, name: str, trigger: str = "api") -> None:
        """Run ``name`` as soon as possible (windows do not apply; the lease does)."""
        with self._lock:
            st = self._state(name)
            if st.phase != "idle" or st.saved is not None:
                doing = "queued" if st.phase == "idle" else st.phase
                raise ScheduleError(f"job {name} is already {doing}; see "
                                    "`swarm-maint jobs list`")
            st.saved = st.next
            st.next = _Slot(None, self.clock.time(), trigger)
        self._wake.set()

    def _state(self, name: str) -> _State:
        if not self._states:
            self.prepare()
        st = self._states.get(name)
        if st is None:
            raise ScheduleError(f"no job named {name!r}; the jobs are: "
                                f"{', '.join(sorted(self.jobs))}")
        return st

    def run_now(self, name: str, trigger: str = "cli") -> JobRunRecord:
        """Run ``name`` on this thread now (the CLI): LeaseBusyError when the lease is held."""
        job = self.jobs.get(name)
        if job is None:
            raise ScheduleError(f"no job named {name!r}; the jobs are: "
                                f"{', '.join(sorted(self.jobs))}")
        now = self.clock.time()
        self.history.state(name, now)
        with self._held(job):
            run_id = self.history.start(name, None, trigger, 1, now, process_identity())
            try:
                outcome = job.action(JobRun(name, trigger, 1, self.stop_event))
            except SwarmMaintError as exc:
                outcome = JobOutcome("failed", str(exc))
            except Exception as exc:
                log.exception("job %s failed unexpectedly", name)
                outcome = JobOutcome("failed", f"internal error: {exc!r}")
            except BaseException as exc:  # Ctrl-C
                self.history.finish(run_id, "interrupted", f"stopped: {exc!r}", {},
                                    self.clock.time())
                raise
        end = self.clock.time()
        rec = self.history.finish(run_id, outcome.status, outcome.summary, outcome.details, end)
        self.history.mark_done(name, None, end if outcome.status == "succeeded" else None)
        return rec

    @contextlib.contextmanager
    def _held(self, job: Job) -> Iterator[None]:
        if not job.lease:
            yield
            return
        with self.lease.hold(job.name):
            yield

    # -- reading -----------------------------------------------------------------------------

    def wait_finished(self, name: str, timeout: float) -> bool:
        """Tests: wait until ``name`` is no longer waiting or running."""
        st = self._state(name)
        return st.phase == "idle" or st.finished.wait(timeout)

    def statuses(self) -> list[dict[str, Any]]:
        """Every job with its rules, what it is doing and its next and last runs."""
        latest = self.history.latest_per_job()
        finished = self.history.latest_finished_per_job(("succeeded", "failed", "skipped",
                                                         "missed", "interrupted"))
        states = self.history.states()
        out = []
        now = self.clock.time()
        with self._lock:
            for name, job in self.jobs.items():
                st = self._states.get(name)
                # not started (the CLI reading the schedule): the next cron slot
                due = st.next.due_at if st is not None else self._slot_after(job, now).due_at
                out.append(describe_job(job, st.phase if st else "idle",
                                        st.reason if st else "",
                                        due if job.enabled else None,
                                        latest.get(name), finished.get(name), states.get(name)))
        return out

    def phases(self) -> dict[str, str]:
        with self._lock:
            return {n: st.phase for n, st in self._states.items()}

    def next_due(self) -> dict[str, float]:
        with self._lock:
            return {n: st.next.due_at for n, st in self._states.items() if st.job.enabled}


def describe_job(job: Job, phase: str, reason: str, next_run: float | None,
                 latest: JobRunRecord | None, last: JobRunRecord | None,
                 state: Any) -> dict[str, Any]:
    """The JSON of one job in `jobs list` and GET /api/v1/jobs."""
    return {
        "name": job.name, "kind": job.kind, "description": job.description,
        "schedule": job.schedule.expr, "enabled": job.enabled, "window": job.window,
        "lease": job.lease, "jitter": job.jitter, "retries": job.retries,
        "state": phase if phase != "idle" else ("idle" if job.enabled else "disabled"),
        "reason": reason or (latest.summary if latest is not None and phase != "idle"
                             else ""),
        "next_run": next_run,
        "last_run": None if last is None else last.to_json(),
        "last_success": None if state is None else state.last_success,
        "max_age": job.max_age,
    }
