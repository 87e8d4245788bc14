"""Maintenance windows: while a job has the node drained or updating, the alerts it expects
(a rebooting GPU is "lost", health checks go CRITICAL) are held back instead of paging.

A window holds the alerts matching its matchers (or ``alerts.maintenance_expected`` when
it names none) from its start until it ends, plus a grace period, and at most until its
deadline. An alert still firing after that was not caused by the maintenance, or outlived
it: it is released, i.e. notified as usual. An alert that fired and resolved inside the
window is never sent. Windows live in the state database (table ``maintenance_windows``),
so a job in another process (an update run from the CLI) can open one.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from ..clock import Clock
from ..errors import NotFoundError, UsageError
from ..store import Store
from .matchers import Matcher, parse_matcher

__all__ = ["Maintenance", "MaintenanceWindow"]

_KEEP_ENDED = 30 * 86400.0
_Holding = list[tuple[str, list[Matcher]]]


@dataclass(frozen=True)
class MaintenanceWindow:
    id: str
    reason: str
    matchers: list[str]
    started: float
    deadline: float
    ended: float | None

    def holds(self, now: float, grace: float) -> bool:
        """Whether the window holds its alerts back at ``now``."""
        if now >= self.deadline:
            return False
        return self.ended is None or now < self.ended + grace

    def to_json(self, now: float, grace: float) -> dict[str, object]:
        return {**asdict(self), "holding": self.holds(now, grace)}


class Maintenance:
    def __init__(self, store: Store, clock: Clock, default_matchers: list[str],
                 grace: float = 120.0) -> None:
        self._store = store
        self._clock = clock
        self._default = [parse_matcher(m) for m in default_matchers]
        self.grace = grace
        self._parsed: dict[str, list[Matcher]] = {}

    def begin(self, reason: str, max_duration: float,
              matchers: list[str] | None = None) -> MaintenanceWindow:
        """Open a window for at most ``max_duration`` seconds."""
        if not reason.strip():
            raise UsageError("a maintenance window needs a reason, e.g. 'driver update'")
        if not max_duration > 0:
            raise UsageError("a maintenance window needs a positive maximum duration")
        try:
            texts = [str(parse_matcher(m)) for m in matchers or []]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        now = self._clock.time()
        w = MaintenanceWindow(secrets.token_hex(8), reason.strip(), texts, now,
                              now + max_duration, None)
        with self._store.transaction() as conn:
            conn.execute("DELETE FROM maintenance_windows WHERE deadline < ?",
                         (now - _KEEP_ENDED,))
            conn.execute("INSERT INTO maintenance_windows VALUES (?, ?, ?, ?, ?, NULL)",
                         (w.id, w.reason, json.dumps(w.matchers), w.started, w.deadline))
        return w

    def end(self, window_id: str) -> MaintenanceWindow:
        """Close a window now (its grace period starts); ending it twice is harmless."""
        now = self._clock.time()
        with self._store.transaction() as conn:
            n = conn.execute("UPDATE maintenance_windows SET ended = ? WHERE id = ?"
                             " AND ended IS NULL", (now, window_id)).rowcount
            if not n and conn.execute("SELECT 1 FROM maintenance_windows WHERE id = ?",
                                      (window_id,)).fetchone() is None:
                raise NotFoundError(f"no maintenance window with id {window_id!r}")
        found = self.get(window_id)
        assert found is not None
        return found

    @contextmanager
    def window(self, reason: str, max_duration: float,
               matchers: list[str] | None = None) -> Iterator[MaintenanceWindow]:
        """Hold the expected alerts while the block runs (ended however it exits)."""
        w = self.begin(reason, max_duration, matchers)
        try:
            yield w
        finally:
            self.end(w.id)

    def get(self, window_id: str) -> MaintenanceWindow | None:
        rows = self._store.query("SELECT * FROM maintenance_windows WHERE id = ?",
                                 (window_id,))
        return _row(rows[0]) if rows else None

    def all(self, include_ended: bool = False) -> list[MaintenanceWindow]:
        now = self._clock.time()
        rows = self._store.query("SELECT * FROM maintenance_windows ORDER BY started, id")
        out = [_row(r) for r in rows]
        return out if include_ended else [w for w in out if w.holds(now, self.grace)]

    def holding(self, now: float) -> _Holding:
        """The windows holding alerts at ``now``, with the matchers of what they hold."""
        rows = self._store.query(
            "SELECT id, matchers FROM maintenance_windows WHERE deadline > ?"
            " AND (ended IS NULL OR ended + ? > ?)", (now, self.grace, now))
        out = []
        for wid, matchers in rows:
            parsed = self._parsed.get(wid)
            if parsed is None:
                texts = json.loads(matchers)
                parsed = [parse_matcher(m) for m in texts] if texts else self._default
                self._parsed[wid] = parsed
            out.append((wid, parsed))
        return out


def _row(r: tuple[object, ...]) -> MaintenanceWindow:
    wid, reason, matchers, started, deadline, ended = r
    return MaintenanceWindow(str(wid), str(reason), json.loads(str(matchers)),
                             float(started), float(deadline),  # type: ignore[arg-type]
                             None if ended is None else float(ended))  # type: ignore[arg-type]
