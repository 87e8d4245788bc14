"""The scheduler's series on /metrics (see docs/metrics.md)::

    swarm_job_last_run_success{job,kind}             1 / 0 for the last run that ran
    swarm_job_last_run_timestamp_seconds{job,kind}
    swarm_job_last_success_timestamp_seconds{job,kind}
    swarm_job_last_duration_seconds{job,kind}
    swarm_job_missed{job,kind}                       1 when the last slot was missed
    swarm_job_running{job,kind} / swarm_job_waiting{job,kind}
    swarm_job_next_run_timestamp_seconds{job,kind}
    swarm_job_runs_total{job,kind,status}            counter
    swarm_maintenance_lease_held{owner}
    swarm_backup_last_run_success{job}               per [[backup.jobs]] name
    swarm_backup_last_success_timestamp_seconds{job} (first sighting until a success)
    swarm_backup_max_age_seconds{job}                schedule period + margin

The database (runs, states, the lease) is read at most every 10 s, and at once after a
run ends or a run starts.
"""

from __future__ import annotations

import threading

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..monitoring.collector import CollectorStatus
from .history import JobRunRecord, JobState
from .lease import LeaseInfo
from .scheduler import Scheduler

__all__ = ["ScheduleCollector"]

_TTL = 10.0


class ScheduleCollector:
    name = "schedule"

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, JobRunRecord], dict[str, JobRunRecord],
                           dict[str, JobState], dict[tuple[str, str], int],
                           LeaseInfo | None] | None = None
        scheduler.on_finish.append(lambda _rec: self.invalidate())
        scheduler.on_start.append(lambda _name: self.invalidate())

    def invalidate(self) -> None:
        with self._lock:
            self._cache = None

    def _read(self) -> tuple[dict[str, JobRunRecord], dict[str, JobRunRecord],
                             dict[str, JobState], dict[tuple[str, str], int],
                             LeaseInfo | None]:
        now = self.scheduler.clock.monotonic()
        with self._lock:
            cache = self._cache
        if cache is None or now - cache[0] > _TTL:
            h = self.scheduler.history
            cache = (now, h.latest_finished_per_job(("succeeded", "failed"), final_only=True),
                     h.latest_finished_per_job(("succeeded", "failed", "skipped", "missed")),
                     h.states(), h.counts(), self.scheduler.lease.holder())
            with self._lock:
                self._cache = cache
        return cache[1], cache[2], cache[3], cache[4], cache[5]

    def collect(self) -> list[Metric]:
        ran, handled, states, counts, holder = self._read()
        phases = self.scheduler.phases()
        due = self.scheduler.next_due()
        lab = ["job", "kind"]
        success = GaugeMetricFamily("swarm_job_last_run_success", "1 when the job's last "
                                    "run succeeded, 0 when it failed (after its retries).",
                                    labels=lab)
        last = GaugeMetricFamily("swarm_job_last_run_timestamp_seconds",
                                 "When the job's last run ended.", labels=lab)
        good = GaugeMetricFamily("swarm_job_last_success_timestamp_seconds",
                                 "When the job's last successful run ended.", labels=lab)
        took = GaugeMetricFamily("swarm_job_last_duration_seconds",
                                 "How long the job's last run took.", labels=lab)
        missed = GaugeMetricFamily("swarm_job_missed", "1 when the job's last slot was "
                                   "missed (its window closed or the lease stayed busy).",
                                   labels=lab)
        running = GaugeMetricFamily("swarm_job_running", "1 while the job runs.", labels=lab)
        waiting = GaugeMetricFamily("swarm_job_waiting", "1 while a due run waits for its "
                                    "window, low GPU usage or the lease.", labels=lab)
        nxt = GaugeMetricFamily("swarm_job_next_run_timestamp_seconds",
                                "When the job runs next (enabled jobs).", labels=lab)
        total = CounterMetricFamily("swarm_job_runs", "Runs of the job by final status.",
                                    labels=[*lab, "status"])
        b_ok = GaugeMetricFamily("swarm_backup_last_run_success", "1 when the backup job's "
                                 "last run succeeded, 0 when it failed.", labels=["job"])
        b_at = GaugeMetricFamily("swarm_backup_last_success_timestamp_seconds",
                                 "End of the backup job's last good run (until the first, "
                                 "when the agent first saw the job).", labels=["job"])
        b_max = GaugeMetricFamily("swarm_backup_max_age_seconds", "How old the newest good "
                                  "backup may get: the schedule's period plus the margin.",
                                  labels=["job"])
        for name, job in self.scheduler.jobs.items():
            if not job.enabled and name not in handled and name not in ran:
                continue  # switched off and never run: nothing to say
            labels = [name, job.kind]
            rec = ran.get(name)
            if rec is not None and rec.ended is not None:
                success.add_metric(labels, float(rec.status == "succeeded"))
                last.add_metric(labels, rec.ended)
                took.add_metric(labels, rec.duration or 0.0)
            st = states.get(name)
            if st is not None and st.last_success is not None:
                good.add_metric(labels, st.last_success)
            h = handled.get(name)
            missed.add_metric(labels, float(h is not None and h.status == "missed"))
            phase = phases.get(name, "idle")
            running.add_metric(labels, float(phase == "running"))
            waiting.add_metric(labels, float(phase == "waiting"))
            if name in due:
                nxt.add_metric(labels, due[name])
            for status in ("succeeded", "failed", "skipped", "missed", "interrupted"):
                n = counts.get((name, status), 0)
                if n:
                    total.add_metric([*labels, status], n)
            bjob = job.labels.get("backup_job")
            if bjob is not None and job.enabled:
                if rec is not None:
                    b_ok.add_metric([bjob], float(rec.status == "succeeded"))
                if st is not None:
                    b_at.add_metric([bjob], st.last_success or st.first_seen)
                if job.max_age is not None:
                    b_max.add_metric([bjob], job.max_age)
        out: list[Metric] = [success, last, good, took, missed, running, waiting, nxt, total,
                             b_ok, b_at, b_max]
        lease = GaugeMetricFamily("swarm_maintenance_lease_held", "1 while a job or command "
                                  "holds the node's maintenance lease.", labels=["owner"])
        if holder is not None:
            lease.add_metric([holder.owner], 1.0)
        out.append(lease)
        return out

    def status(self) -> CollectorStatus:
        return CollectorStatus()

    def close(self) -> None:
        pass
