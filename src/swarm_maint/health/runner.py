"""Runs health checks on their intervals, with timeouts, hysteresis and persistence.

Each run happens on a short-lived daemon thread the runner waits on for the check's
timeout: a check that hangs is reported UNKNOWN and is not started again until the stuck
call returns, so it can never stall the agent or pile up threads.

Hysteresis: a condition turns unhealthy after ``failures_to_trip`` consecutive non-OK
runs (taking the run's status, so WARNING can grow into CRITICAL), and clears by itself
after ``passes_to_clear`` consecutive OK runs. Conditions and their transitions are kept
in SQLite; conditions of checks no longer configured are dropped at start.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from ..clock import Clock, SystemClock
from ..config import HealthConfig
from ..monitoring.collector import CollectorStatus
from ..store import Store
from .check import STATUS_CODES, CheckResult, HealthCheck, Status

__all__ = ["Condition", "HealthRunner", "exit_code", "load_history"]

log = logging.getLogger(__name__)


def load_history(store: Store, check: str | None = None, since: float = 0.0,
                 limit: int = 1000) -> list[dict[str, Any]]:
    """Condition transitions, newest first."""
    sql = ("SELECT ts, check_name, from_status, to_status, message, action "
           "FROM health_transitions WHERE ts >= ?")
    params: list[Any] = [since]
    if check:
        sql += " AND check_name = ?"
        params.append(check)
    sql += " ORDER BY ts DESC, id DESC LIMIT ?"
    params.append(limit)
    return [{"ts": ts, "check": c, "from": f, "to": t, "message": m, "action": a}
            for ts, c, f, t, m, a in store.query(sql, params)]


def exit_code(results: Iterable[CheckResult]) -> int:
    """Nagios / node-problem-detector codes: 2 any CRITICAL, 1 any WARNING, 3 UNKNOWN only."""
    statuses = {r.status for r in results}
    if "CRITICAL" in statuses:
        return 2
    if "WARNING" in statuses:
        return 1
    if "UNKNOWN" in statuses:
        return 3
    return 0


@dataclass
class Condition:
    """The state of one check after hysteresis."""

    check: str
    status: Status = "OK"
    raw_status: Status = "OK"
    message: str = ""
    action: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    since: float = 0.0
    updated: float = 0.0
    failures: int = 0
    passes: int = 0
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "message": self.message,
                "action": self.action, "details": self.details, "raw_status": self.raw_status,
                "since": self.since, "updated": self.updated, "failures": self.failures,
                "passes": self.passes}


def run_with_timeout(check: HealthCheck,
                     timeout: float) -> tuple[CheckResult, threading.Event]:
    """(result, done). A check that raises or overruns becomes UNKNOWN; ``done`` is set
    once the check's own call has returned (later than the result, if it overran)."""
    box: list[CheckResult] = []
    done = threading.Event()

    def target() -> None:
        try:
            box.append(check.run())
        except Exception as exc:  # a broken check is UNKNOWN, never fatal
            box.append(CheckResult(check.name, "UNKNOWN",
                                   f"check failed: {type(exc).__name__}: {exc}", "investigate"))
        finally:
            done.set()

    t = threading.Thread(target=target, name=f"check-{check.name}", daemon=True)
    t.start()
    if not done.wait(timeout):
        return CheckResult(check.name, "UNKNOWN", f"timed out after {timeout:g}s",
                           "investigate"), done
    return box[0], done


class HealthRunner:
    def __init__(self, checks: Sequence[HealthCheck], config: HealthConfig,
                 store: Store | None = None, clock: Clock | None = None) -> None:
        self.checks = {c.name: c for c in checks}
        self.config = config
        self.store = store
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._due: dict[str, float] = {}
        self._busy: set[str] = set()
        self._again: set[str] = set()  # asked for while running: run once more after
        self.conditions: dict[str, Condition] = {}
        # called with the condition after each status change (the agent collects at once,
        # so alert rules see the change without waiting for the next tick)
        self.on_transition: list[Callable[[Condition], None]] = []
        self._load()

    # -- configuration ----------------------------------------------------------------

    def _override(self, name: str) -> Any:
        return self.config.checks.get(name)

    def interval_of(self, check: HealthCheck) -> float:
        o = self._override(check.name)
        return o.interval if o is not None and o.interval is not None else check.interval

    def _trip(self, name: str) -> int:
        o = self._override(name)
        return o.failures_to_trip if o and o.failures_to_trip else self.config.failures_to_trip

    def _clear(self, name: str) -> int:
        o = self._override(name)
        return o.passes_to_clear if o and o.passes_to_clear else self.config.passes_to_clear

    # -- persistence --------------------------------------------------------------------

    def _load(self) -> None:
        if self.store is None:
            return
        rows = self.store.query(
            "SELECT check_name, status, raw_status, message, action, details, since, "
            "updated, failures, passes FROM health_state")
        gone = []
        for (name, status, raw, msg, action, details, since, updated, fails, passes) in rows:
            if name not in self.checks:
                gone.append(name)
                continue
            self.conditions[name] = Condition(name, status, raw, msg, action,
                                              json.loads(details), since, updated, fails,
                                              passes)
        if gone:  # checks removed from the config: their conditions disappear
            with self.store.transaction() as db:
                db.executemany("DELETE FROM health_state WHERE check_name = ?",
                               [(n,) for n in gone])

    def _save(self, cond: Condition, transition: tuple[str, str] | None) -> None:
        if self.store is None:
            return
        with self.store.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO health_state VALUES (?,?,?,?,?,?,?,?,?,?)",
                (cond.check, cond.status, cond.raw_status, cond.message, cond.action,
                 json.dumps(cond.details, default=str), cond.since, cond.updated,
                 cond.failures, cond.passes))
            if transition is not None:
                db.execute(
                    "INSERT INTO health_transitions(ts, check_name, from_status, to_status, "
                    "message, action) VALUES (?,?,?,?,?,?)",
                    (cond.updated, cond.check, transition[0], transition[1], cond.message,
                     cond.action))

    # -- running ------------------------------------------------------------------------

    def record(self, result: CheckResult, duration: float = 0.0) -> Condition:
        """Fold one run's result into the check's condition (hysteresis) and persist it."""
        now = self.clock.time()
        with self._lock:
            cond = self.conditions.get(result.check)
            if cond is None:
                cond = Condition(result.check, since=now)
                self.conditions[result.check] = cond
            before = cond.status
            cond.raw_status = result.status
            cond.updated = now
            cond.duration = duration
            if result.status == "OK":
                cond.passes += 1
                cond.failures = 0
                if cond.status != "OK" and cond.passes >= self._clear(result.check):
                    cond.status = "OK"
            else:
                cond.failures += 1
                cond.passes = 0
                if cond.failures >= self._trip(result.check):
                    cond.status = result.status
            # the message describes the condition: keep the failing one while it holds
            if cond.status == result.status:
                cond.message, cond.action, cond.details = (result.message, result.action,
                                                           result.details)
            if cond.status != before:
                cond.since = now
            transition = (before, cond.status) if cond.status != before else None
        self._save(cond, transition)
        if transition is not None:
            log.info("health %s: %s -> %s: %s", result.check, before, cond.status,
                     cond.message)
            for hook in self.on_transition:
                try:
                    hook(cond)
                except Exception:  # a failing consumer must not stop the checks
                    log.exception("health transition consumer failed")
        return cond

    def run_check(self, check: HealthCheck) -> CheckResult | None:
        """Run one check now and record it. While its previous run is still going, it
        is not started twice: it runs once more as soon as that run is over (a trigger,
        such as a new XID, must not be lost to a run that began before it)."""
        with self._lock:
            if check.name in self._busy:
                self._again.add(check.name)
                return None
            self._busy.add(check.name)
        t0 = time.monotonic()
        result, done = run_with_timeout(check, check.timeout)
        if done.is_set():
            self.record(result, time.monotonic() - t0)  # before a run asked for meanwhile
            self._release(check.name)
        else:  # stuck: free the check only when its call finally returns
            threading.Thread(target=self._unbusy_later, args=(check.name, done),
                             daemon=True).start()
            self.record(result, time.monotonic() - t0)
        return result

    def _unbusy_later(self, name: str, done: threading.Event) -> None:
        done.wait()
        self._release(name)

    def _release(self, name: str) -> None:
        with self._lock:
            self._busy.discard(name)
            again = name in self._again
            self._again.discard(name)
            if again:
                self._due[name] = 0.0
        if again:
            self._wake.set()

    def run_now(self, names: Sequence[str] = (), level: int = 1,
                idle: Callable[[], tuple[bool, str]] | None = None) -> list[CheckResult]:
        """Run the selected checks (all of ``level`` and below) now, in parallel.

        Active diagnostics (level 2) load the GPUs: when ``idle`` says the node is busy
        they are skipped and reported UNKNOWN with the reason, never run under a workload.
        """
        chosen = [c for c in self.checks.values()
                  if (not names or c.name in names) and c.level <= level]
        busy = ""
        if idle is not None and any(c.level >= 2 for c in chosen):
            is_idle, why = idle()
            busy = "" if is_idle else why
        results: list[CheckResult | None] = [None] * len(chosen)

        def one(i: int, c: HealthCheck) -> None:
            if c.level >= 2 and busy:
                results[i] = CheckResult(c.name, "UNKNOWN", f"skipped: {busy}", None,
                                         {"skipped": True})
                return
            results[i] = self.run_check(c)

        threads = [threading.Thread(target=one, args=(i, c), daemon=True)
                   for i, c in enumerate(chosen)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [r for r in results if r is not None]

    def trigger(self, name: str) -> None:
        """Run ``name`` as soon as possible (e.g. a new XID arrived)."""
        with self._lock:
            self._due[name] = 0.0
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Run passive checks on their intervals until ``stop`` is set."""
        now = self.clock.monotonic()
        with self._lock:
            for c in self.checks.values():
                self._due.setdefault(c.name, now)
        while not stop.is_set():
            now = self.clock.monotonic()
            with self._lock:
                due = [self.checks[n] for n, t in self._due.items()
                       if t <= now and n in self.checks and self.checks[n].level == 1]
                for c in due:
                    self._due[c.name] = now + self.interval_of(c)
            for c in due:
                threading.Thread(target=self.run_check, args=(c,), daemon=True,
                                 name=f"health-{c.name}").start()
            with self._lock:
                upcoming = [t for n, t in self._due.items()
                            if n in self.checks and self.checks[n].level == 1]
            wait = max(0.05, min(upcoming) - self.clock.monotonic()) if upcoming else 3600.0
            if self._wake.wait(wait):
                self._wake.clear()

    def stop(self) -> None:
        self._wake.set()

    # -- readers ------------------------------------------------------------------------

    def snapshot(self) -> list[Condition]:
        with self._lock:
            return [Condition(**vars(c)) for c in self.conditions.values()]

    def history(self, check: str | None = None, since: float = 0.0,
                limit: int = 1000) -> list[dict[str, Any]]:
        return [] if self.store is None else load_history(self.store, check, since, limit)

    def collector(self) -> _HealthCollector:
        return _HealthCollector(self)


class _HealthCollector:
    """Exports the conditions as metrics, so alert rules can use them."""

    name = "health"

    def __init__(self, runner: HealthRunner) -> None:
        self._runner = runner

    def collect(self) -> list[Metric]:
        status = GaugeMetricFamily(
            "swarm_health_status",
            "Condition of each health check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
            labels=["check", "action"])
        raw = GaugeMetricFamily(
            "swarm_health_check_result",
            "Status of the last run of each check (before hysteresis), coded as above.",
            labels=["check"])
        since = GaugeMetricFamily(
            "swarm_health_status_since_timestamp_seconds",
            "When each condition took its current status.", labels=["check"])
        dur = GaugeMetricFamily(
            "swarm_health_check_duration_seconds",
            "How long the last run of each check took.", labels=["check"])
        for c in self._runner.snapshot():
            status.add_metric([c.check, c.action or "none"], STATUS_CODES[c.status])
            raw.add_metric([c.check], STATUS_CODES[c.raw_status])
            since.add_metric([c.check], c.since)
            dur.add_metric([c.check], c.duration)
        return [status, raw, since, dur]

    def status(self) -> CollectorStatus:
        return CollectorStatus()

    def close(self) -> None:
        pass
