"""Update runs and their steps as stored in the state database."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..store import Store
from .policy import Mode, PlanItem

__all__ = ["FINISHED", "RunRecord", "StepRecord", "UpdateHistory"]

FINISHED = ("succeeded", "failed")


@dataclass
class StepRecord:
    seq: int
    step: str
    status: str                 # running, done, skipped, failed, waiting
    started: float
    ended: float | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "step": self.step, "status": self.status,
                "started": self.started, "ended": self.ended, "detail": self.detail}


@dataclass
class RunRecord:
    id: int
    started: float
    ended: float | None
    status: str                 # running, awaiting-reboot, succeeded, failed
    mode: Mode
    trigger: str
    items: list[PlanItem]
    state: dict[str, Any]
    error: str | None
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "started": self.started, "ended": self.ended,
                "status": self.status, "mode": self.mode, "trigger": self.trigger,
                "error": self.error, "items": [i.to_json() for i in self.items],
                "steps": [s.to_json() for s in self.steps]}


class UpdateHistory:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, items: list[PlanItem], mode: Mode, trigger: str, now: float) -> int:
        with self.store.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO update_runs (started, status, mode, trigger, items, state)"
                " VALUES (?, 'running', ?, ?, ?, '{}')",
                (now, mode, trigger, json.dumps([i.to_json() for i in items])))
            assert cur.lastrowid is not None
            return cur.lastrowid

    def get(self, run_id: int) -> RunRecord | None:
        rows = self.store.query("SELECT * FROM update_runs WHERE id = ?", (run_id,))
        return self._with_steps(_run(rows[0])) if rows else None

    def runs(self, limit: int = 50) -> list[RunRecord]:
        """The newest runs first, each with its steps."""
        rows = self.store.query("SELECT * FROM update_runs ORDER BY id DESC LIMIT ?", (limit,))
        return [self._with_steps(_run(r)) for r in rows]

    def unfinished(self) -> RunRecord | None:
        rows = self.store.query("SELECT * FROM update_runs WHERE status NOT IN (?, ?)"
                                " ORDER BY id DESC LIMIT 1", FINISHED)
        return self._with_steps(_run(rows[0])) if rows else None

    def has_unfinished(self) -> bool:
        """Cheap form of ``unfinished() is not None`` (no steps, no JSON)."""
        return bool(self.store.query("SELECT 1 FROM update_runs WHERE status NOT IN (?, ?)"
                                     " LIMIT 1", FINISHED))

    def last_finished(self) -> RunRecord | None:
        rows = self.store.query("SELECT * FROM update_runs WHERE status IN (?, ?)"
                                " ORDER BY id DESC LIMIT 1", FINISHED)
        return _run(rows[0]) if rows else None

    def save_state(self, run_id: int, state: dict[str, Any], status: str | None = None) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE update_runs SET state = ?, status = COALESCE(?, status)"
                         " WHERE id = ?", (json.dumps(state, sort_keys=True), status, run_id))

    def finish(self, run_id: int, status: str, error: str | None, now: float) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE update_runs SET status = ?, error = ?, ended = ?"
                         " WHERE id = ?", (status, error, now, run_id))

    def begin_step(self, run_id: int, step: str, now: float) -> int:
        with self.store.transaction() as conn:
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM update_steps"
                               " WHERE run_id = ?", (run_id,)).fetchone()[0]
            conn.execute("INSERT INTO update_steps VALUES (?, ?, ?, 'running', ?, NULL, '')",
                         (run_id, seq, step, now))
        return int(seq)

    def end_step(self, run_id: int, seq: int, status: str, detail: str, now: float) -> None:
        with self.store.transaction() as conn:
            conn.execute("UPDATE update_steps SET status = ?, detail = ?, ended = ?"
                         " WHERE run_id = ? AND seq = ?", (status, detail, now, run_id, seq))

    def _with_steps(self, run: RunRecord) -> RunRecord:
        rows = self.store.query("SELECT seq, step, status, started, ended, detail"
                                " FROM update_steps WHERE run_id = ? ORDER BY seq", (run.id,))
        run.steps = [StepRecord(*r) for r in rows]
        return run


def _run(r: tuple[Any, ...]) -> RunRecord:
    return RunRecord(id=r[0], started=r[1], ended=r[2], status=r[3], mode=r[4], trigger=r[5],
                     items=[PlanItem.from_json(i) for i in json.loads(r[6])],
                     state=json.loads(r[7]), error=r[8])
