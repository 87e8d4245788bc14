"""Silences: label matchers that mute matching alerts for a while (table ``alert_silences``).

A silence mutes new notifications; an alert a receiver was already told about still gets
its ``resolved``, so nobody is left with an alert that never ends. Silences live in the
state database, so the CLI can add one while the agent runs: the agent reads the active
ones at every evaluation. Expired silences are kept 7 days for ``silence list --all``.
"""

from __future__ import annotations

import getpass
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..clock import Clock
from ..errors import NotFoundError, UsageError
from ..store import Store
from .matchers import Matcher, matches_all, parse_matcher

__all__ = ["Silence", "Silences", "silenced_by"]

_Active = list[tuple[str, list[Matcher]]]

_KEEP_EXPIRED = 7 * 86400.0


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: list[str]
    starts: float
    ends: float
    comment: str
    created_by: str
    created: float

    def state(self, now: float) -> str:
        if now >= self.ends:
            return "expired"
        return "active" if now >= self.starts else "pending"

    def to_json(self, now: float) -> dict[str, object]:
        return {**asdict(self), "state": self.state(now)}


class Silences:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._parsed: dict[str, list[Matcher]] = {}

    def add(self, matchers: list[str], duration: float, comment: str,
            created_by: str | None = None, starts: float | None = None) -> Silence:
        """Store a new silence; ``UsageError`` for bad matchers, duration or comment."""
        if not matchers:
            raise UsageError("a silence needs at least one matcher, e.g. alertname=GpuLost")
        try:
            parsed = [parse_matcher(m) for m in matchers]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if _matches_anything(parsed):
            raise UsageError("these matchers match every alert (or nearly: the Watchdog "
                             "too); name at least one label value, e.g. alertname=GpuLost")
        if not duration > 0:
            raise UsageError("a silence needs a positive duration, e.g. 2h")
        if not comment.strip():
            raise UsageError("a silence needs a comment saying why")
        now = self._clock.time()
        start = now if starts is None else starts
        silence = Silence(secrets.token_hex(8), [str(m) for m in parsed], start,
                          start + duration, comment.strip(), created_by or _user(), now)
        with self._store.transaction() as conn:
            conn.execute("DELETE FROM alert_silences WHERE ends < ?", (now - _KEEP_EXPIRED,))
            conn.execute(
                "INSERT INTO alert_silences VALUES (?, ?, ?, ?, ?, ?, ?)",
                (silence.id, json.dumps(silence.matchers), silence.starts, silence.ends,
                 silence.comment, silence.created_by, silence.created),
            )
        return silence

    def expire(self, silence_id: str) -> Silence:
        """End a silence now; ``UsageError`` when there is none with that id."""
        now = self._clock.time()
        with self._store.transaction() as conn:
            row = conn.execute("SELECT * FROM alert_silences WHERE id = ?",
                               (silence_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no silence with id {silence_id!r} "
                                 "(see: swarm-maint alerts silence list)")
            if row[3] > now:
                conn.execute("UPDATE alert_silences SET ends = ? WHERE id = ?",
                             (now, silence_id))
        found = self.get(silence_id)
        assert found is not None
        return found

    def get(self, silence_id: str) -> Silence | None:
        rows = self._store.query("SELECT * FROM alert_silences WHERE id = ?", (silence_id,))
        return _row(rows[0]) if rows else None

    def all(self, include_expired: bool = False) -> list[Silence]:
        now = self._clock.time()
        sql = "SELECT * FROM alert_silences"
        params: tuple[float, ...] = ()
        if not include_expired:
            sql += " WHERE ends > ?"
            params = (now,)
        return [_row(r) for r in self._store.query(sql + " ORDER BY starts, id", params)]

    def active(self, now: float) -> _Active:
        """The silences in force at ``now``, with their parsed matchers."""
        rows = self._store.query(
            "SELECT id, matchers FROM alert_silences WHERE starts <= ? AND ends > ?",
            (now, now))
        out = []
        for sid, matchers in rows:
            parsed = self._parsed.get(sid)
            if parsed is None:
                parsed = [parse_matcher(m) for m in json.loads(matchers)]
                if len(self._parsed) > 1000:
                    self._parsed.clear()
                self._parsed[sid] = parsed
            out.append((sid, parsed))
        return out


def silenced_by(active: _Active,
                labels: Mapping[str, str]) -> str | None:
    """The id of the first silence in ``active`` that mutes ``labels``."""
    for sid, matchers in active:
        if matches_all(matchers, labels):
            return sid
    return None


def _row(r: tuple[object, ...]) -> Silence:
    sid, matchers, starts, ends, comment, by, created = r
    return Silence(str(sid), json.loads(str(matchers)), float(starts),  # type: ignore[arg-type]
                   float(ends), str(comment), str(by), float(created))  # type: ignore[arg-type]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _matches_anything(matchers: list[Matcher]) -> bool:
    """Whether the matchers would also match an alert they know nothing about: each label
    they name set to a value no rule gives it (and, separately, left out). A matcher
    such as ``alertname!=""``, ``node=~.+`` or ``alertname!=Watchdog`` passes that test
    and would mute nearly everything, the dead-man's switch included."""
    names = {m.name for m in matchers}
    unknown = {n: f"zz-probe-{secrets.token_hex(4)}" for n in names | {"alertname", "node"}}
    return (all(m.matches(unknown) for m in matchers)
            or all(m.matches({}) for m in matchers))
