"""Job runs and per-job schedule state, as stored in the state database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..store import Store

__all__ = ["FINAL", "JobHistory", "JobRunRecord", "JobState"]

FINAL = ("succeeded", "failed", "skipped", "missed", "interrupted")


@dataclass(frozen=True)
class JobRunRecord:
    id: int
    job: str
    slot: float | None
    trigger: str
    attempt: int
    started: float
    ended: float | None
    status: str
    summary: str
    details: dict[str, Any]
    holder: str

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else max(0.0, self.ended - self.started)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "job": self.job, "slot": self.slot, "trigger": self.trigger,
                "attempt": self.attempt, "started": self.started, "ended": self.ended,
                "duration": self.duration, "status": self.status, "summary": self.summary,
                "details": self.details}


@dataclass(frozen=True)
class JobState:
    job: str
    first_seen: float
    done_slot: float | None
    last_success: float | None


_COLUMNS = "id, job, slot, trigger, attempt, started, ended, status, summary, details, holder"


def _record(r: tuple[Any, ...]) -> JobRunRecord:
    return JobRunRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8],
                        json.loads(r[9]), r[10])


class JobHistory:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- runs ------------------------------------------------------------------------------

    def start(self, job: str, slot: float | None, trigger: str, attempt: int, now: float,
              holder: str, status: str = "running", summary: str = "") -> int:
        with self.store.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO job_runs (job, slot, trigger, attempt, started, status, summary,"
                " details, holder) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?)",
                (job, slot, trigger, attempt, now, status, summary, holder))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def update(self, run_id: int, *, status: str | None = None, summary: str | None = None,
               started: float | None = None) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE job_runs SET status = COALESCE(?, status), summary ="
                         " COALESCE(?, summary), started = COALESCE(?, started) WHERE id = ?",
                         (status, summary, started, run_id))

    def finish(self, run_id: int, status: str, summary: str, details: dict[str, Any],
               now: float, *, final: bool = True) -> JobRunRecord:
        """``final`` False: a failed attempt that will be retried (alerts wait for the
        last attempt)."""
        with self.store.transaction() as conn:
            conn.execute("UPDATE job_runs SET status = ?, summary = ?, details = ?, ended = ?,"
                         " final = ? WHERE id = ?",
                         (status, summary, json.dumps(details, default=str), now, int(final),
                          run_id))
            row = conn.execute(f"SELECT {_COLUMNS} FROM job_runs WHERE id = ?",
                               (run_id,)).fetchone()
        return _record(row)

    def get(self, run_id: int) -> JobRunRecord | None:
        rows = self.store.query(f"SELECT {_COLUMNS} FROM job_runs WHERE id = ?", (run_id,))
        return _record(rows[0]) if rows else None

    def runs(self, job: str | None = None, limit: int = 50) -> list[JobRunRecord]:
        """The newest runs first."""
        if job is None:
            rows = self.store.query(f"SELECT {_COLUMNS} FROM job_runs ORDER BY id DESC"
                                    " LIMIT ?", (limit,))
        else:
            rows = self.store.query(f"SELECT {_COLUMNS} FROM job_runs WHERE job = ?"
                                    " ORDER BY id DESC LIMIT ?", (job, limit))
        return [_record(r) for r in rows]

    def latest_per_job(self) -> dict[str, JobRunRecord]:
        """Each job's newest run."""
        rows = self.store.query(f"SELECT {_COLUMNS} FROM job_runs WHERE id IN"
                                " (SELECT MAX(id) FROM job_runs GROUP BY job)")
        return {r[1]: _record(r) for r in rows}

    def latest_finished_per_job(self, statuses: tuple[str, ...],
                                final_only: bool = False) -> dict[str, JobRunRecord]:
        marks = ", ".join("?" * len(statuses))
        final = " AND final = 1" if final_only else ""
        rows = self.store.query(
            f"SELECT {_COLUMNS} FROM job_runs WHERE id IN (SELECT MAX(id) FROM job_runs"
            f" WHERE status IN ({marks}){final} GROUP BY job)", statuses)
        return {r[1]: _record(r) for r in rows}

    def prune(self, job: str, keep: int) -> int:
        """Forget all but the newest ``keep`` runs of ``job``; how many were deleted."""
        with self.store.transaction() as conn:
            cur = conn.execute("DELETE FROM job_runs WHERE job = ? AND id < COALESCE((SELECT id"
                               " FROM job_runs WHERE job = ? ORDER BY id DESC LIMIT 1"
                               " OFFSET ?), -1)", (job, job, keep - 1))
            return cur.rowcount

    def counts(self) -> dict[tuple[str, str], int]:
        """(job, status) → number of runs, for the runs_total counter."""
        return {(j, s): n for j, s, n in self.store.query(
            "SELECT job, status, COUNT(*) FROM job_runs GROUP BY job, status")}

    def unfinished(self) -> list[JobRunRecord]:
        rows = self.store.query(f"SELECT {_COLUMNS} FROM job_runs WHERE status IN"
                                " ('waiting', 'running') ORDER BY id")
        return [_record(r) for r in rows]

    # -- per-job schedule state ------------------------------------------------------------

    def state(self, job: str, now: float) -> JobState:
        """The job's state, created (first seen now) the first time a job is seen."""
        with self.store.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO job_state (job, first_seen) VALUES (?, ?)",
                         (job, now))
            row = conn.execute("SELECT job, first_seen, done_slot, last_success FROM job_state"
                               " WHERE job = ?", (job,)).fetchone()
        return JobState(*row)

    def states(self) -> dict[str, JobState]:
        return {r[0]: JobState(*r) for r in self.store.query(
            "SELECT job, first_seen, done_slot, last_success FROM job_state")}

    def mark_done(self, job: str, slot: float | None, success_at: float | None) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE job_state SET done_slot = MAX(COALESCE(done_slot, ?), ?)"
                         " WHERE job = ? AND ? IS NOT NULL", (slot, slot, job, slot))
            conn.execute("UPDATE job_state SET last_success = ? WHERE job = ? AND ? IS NOT NULL",
                         (success_at, job, success_at))
