"""A durable outbox for alert notifications (table ``alert_outbox``, migration 0003).

``enqueue`` writes a notification in its own transaction *before* anything is sent, so a
crash or restart loses nothing: a new ``Outbox`` on the same database delivers what an
earlier one did not, and never re-sends a row once it is marked delivered.

Delivery (``deliver_due``):

* Groups: every row carries the ``group_key`` (and ``group_labels``) its route gave it.
  A receiver's rows of one group are sent together, oldest first, as one ``Batch``.
  There is no coalescing: a ``firing`` followed by a ``resolved`` for the same alert are
  both kept and both sent, in that order.
* Order: a group is due when its oldest undelivered row is (``next_attempt``; a route's
  ``group_wait`` delays the first row of a new group); the group's later rows wait for it
  (head-of-line), so a receiver never sees an alert's ``resolved`` before its ``firing``
  (an alert always falls in the same group). Groups are independent of each other.
* Rate: a token bucket per receiver refills at ``max_per_second`` (on the clock's
  monotonic time) and holds at most ``max(1, max_per_second)`` tokens, so a receiver that
  comes back after an hour gets a bounded rate, not a storm. One token per notification;
  a batch holds at most the tokens available.
* Failure: when the sender raises, every row of the batch gets ``attempts + 1``,
  ``last_error`` (one line) and ``next_attempt = now + min(max_delay, base_delay *
  2**attempts) * uniform(1 - jitter, 1 + jitter)`` (``attempts`` before the increment).
* Unknown receiver: its due rows stay queued with ``last_error = "no such receiver"`` and
  are retried with the same backoff (the receiver may appear after a config reload).
* Age: an undelivered row older than ``max_age`` is given up: marked delivered with
  ``last_error = "expired"`` (and logged). Delivered rows (including expired ones) are
  deleted once they are older than ``max_age``.

Thread-safety: one lock serializes ``deliver_due`` (and the token buckets); ``enqueue``
and ``pending`` rely on the Store's own lock and transactions, so enqueuing never waits
for a slow receiver.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..clock import Clock
from ..store import Store
from .engine import AlertChange
from .notifiers import Batch

__all__ = ["ZERO_TIME", "Outbox", "Sender", "alert_payload", "rfc3339"]

log = logging.getLogger(__name__)

Sender = Callable[[Batch], None]

# Alertmanager's "no end time" (Go's zero time.Time).
ZERO_TIME = "0001-01-01T00:00:00Z"

_MAX_ERROR = 500


def rfc3339(t: float) -> str:
    """``t`` (unix seconds) as RFC 3339 in UTC with milliseconds, e.g. ...T12:00:00.000Z."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def alert_payload(change: AlertChange, now: float) -> dict[str, Any]:
    """The alert of ``change`` in the shape of one entry of Alertmanager's webhook."""
    a = change.alert
    if change.kind == "resolved":
        ends = rfc3339(a.resolved_at if a.resolved_at is not None else now)
    else:
        ends = ZERO_TIME
    return {
        "status": change.kind,
        "labels": dict(a.labels),
        "annotations": dict(a.annotations),
        "startsAt": rfc3339(a.active_since),
        "endsAt": ends,
        "fingerprint": a.fingerprint,
    }


def _batch_key(group_key: str) -> str:
    """The route's group key (``{}:{}`` for rows queued without one)."""
    return group_key or "{}:{}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:_MAX_ERROR]


class Outbox:
    """Durable, rate-limited, retrying delivery of alert notifications."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        jitter: float = 0.2,
        max_per_second: float = 5.0,
        max_age: float = 7 * 86400,
        rng: random.Random | None = None,
    ) -> None:
        if base_delay <= 0 or max_delay <= 0 or max_per_second <= 0 or max_age <= 0:
            raise ValueError("outbox delays, rate and max_age must be positive")
        if not 0 <= jitter < 1:
            raise ValueError("outbox jitter must be in [0, 1)")
        self._store = store
        self._clock = clock
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self.max_per_second = max_per_second
        self.max_age = max_age
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._capacity = max(1.0, max_per_second)
        # receiver -> (tokens, monotonic time of the last refill)
        self._buckets: dict[str, tuple[float, float]] = {}
        # set by enqueue: the delivery loop sleeps until there is something to send
        self._wake = threading.Event()

    # -- writing ----------------------------------------------------------------------------

    def enqueue(
        self,
        receiver: str,
        change: AlertChange,
        *,
        group_key: str = "",
        group_labels: Mapping[str, str] | None = None,
        group_wait: float = 0.0,
    ) -> int:
        """Store a notification for ``receiver`` durably; its row id.

        The first row of a group that has nothing queued waits ``group_wait`` seconds, so
        alerts of the same group that come soon after go in the same message."""
        now = self._clock.time()
        payload = json.dumps(alert_payload(change, now), sort_keys=True)
        labels = json.dumps(dict(group_labels or {}), sort_keys=True)
        with self._store.transaction() as conn:
            queued = group_wait > 0 and conn.execute(
                "SELECT 1 FROM alert_outbox WHERE delivered IS NULL AND receiver = ?"
                " AND group_key = ? LIMIT 1", (receiver, group_key),
            ).fetchone() is not None
            due = now if queued or group_wait <= 0 else now + group_wait
            cur = conn.execute(
                "INSERT INTO alert_outbox (receiver, fingerprint, kind, payload, created,"
                " attempts, next_attempt, group_key, group_labels)"
                " VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
                (receiver, change.alert.fingerprint, change.kind, payload, now, due,
                 group_key, labels),
            )
            row_id = cur.lastrowid
        assert row_id is not None
        self._wake.set()
        return row_id

    def queued(self, receiver: str, fingerprint: str) -> bool:
        """Whether a notification about this alert still waits for ``receiver``."""
        return bool(self._store.query(
            "SELECT 1 FROM alert_outbox WHERE delivered IS NULL AND receiver = ?"
            " AND fingerprint = ? LIMIT 1", (receiver, fingerprint)))

    def wake(self) -> None:
        """Make ``run`` look at the queue now (new rows, or shutting down)."""
        self._wake.set()

    # -- reading ----------------------------------------------------------------------------

    def pending(self) -> list[dict[str, Any]]:
        """The undelivered notifications, oldest first."""
        rows = self._store.query(
            "SELECT id, receiver, fingerprint, kind, payload, created, attempts,"
            " next_attempt, last_error, group_key FROM alert_outbox WHERE delivered IS NULL"
            " ORDER BY id"
        )
        return [
            {
                "id": r[0],
                "receiver": r[1],
                "fingerprint": r[2],
                "kind": r[3],
                "payload": json.loads(r[4]),
                "created": r[5],
                "attempts": r[6],
                "next_attempt": r[7],
                "last_error": r[8],
                "group_key": r[9],
            }
            for r in rows
        ]

    # -- delivery ---------------------------------------------------------------------------

    def _take_tokens(self, receiver: str, wanted: int, *, peek: bool = False) -> int:
        """Up to ``wanted`` whole tokens from ``receiver``'s bucket (refilled first);
        with ``peek`` only how many there are."""
        mono = self._clock.monotonic()
        tokens, last = self._buckets.get(receiver, (self._capacity, mono))
        tokens = min(self._capacity, tokens + max(0.0, mono - last) * self.max_per_second)
        n = min(wanted, int(tokens))
        if not peek:
            self._buckets[receiver] = (tokens - n, mono)
        return n

    def _backoff(self, attempts: int) -> float:
        delay = min(self.max_delay, self.base_delay * 2.0 ** min(attempts, 64))
        return delay * self._rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)

    def _fail(self, rows: list[tuple[int, int]], error: str, now: float) -> None:
        with self._store.transaction() as conn:
            for row_id, attempts in rows:
                conn.execute(
                    "UPDATE alert_outbox SET attempts = ?, next_attempt = ?, last_error = ?"
                    " WHERE id = ? AND delivered IS NULL",
                    (attempts + 1, now + self._backoff(attempts), error, row_id),
                )

    def _expire(self, now: float) -> None:
        cutoff = now - self.max_age
        with self._store.transaction() as conn:
            n = conn.execute(
                "UPDATE alert_outbox SET delivered = ?, last_error = 'expired'"
                " WHERE delivered IS NULL AND created < ?",
                (now, cutoff),
            ).rowcount
            conn.execute(
                "DELETE FROM alert_outbox WHERE delivered IS NOT NULL AND delivered < ?",
                (cutoff,),
            )
        if n:
            log.warning("gave up %d alert notification(s) older than %.0f s", n, self.max_age)

    def deliver_due(self, senders: Mapping[str, Sender]) -> int:
        """Send what is due, within each receiver's rate; how many were delivered."""
        with self._lock:
            now = self._clock.time()
            self._expire(now)
            receivers = [
                r[0]
                for r in self._store.query(
                    "SELECT DISTINCT receiver FROM alert_outbox"
                    " WHERE delivered IS NULL ORDER BY receiver",
                )
            ]
            delivered = 0
            for receiver in receivers:
                delivered += self._deliver_receiver(receiver, senders.get(receiver), now)
            return delivered

    def _deliver_receiver(self, receiver: str, sender: Sender | None, now: float) -> int:
        if sender is None:
            rows = self._store.query(
                "SELECT id, attempts FROM alert_outbox WHERE delivered IS NULL"
                " AND receiver = ? AND next_attempt <= ? ORDER BY id",
                (receiver, now),
            )
            self._fail([(r[0], r[1]) for r in rows], "no such receiver", now)
            return 0
        # each group's oldest row (SQLite takes the bare columns from the MIN(id) row)
        heads = self._store.query(
            "SELECT group_key, MIN(id), next_attempt, group_labels FROM alert_outbox"
            " WHERE delivered IS NULL AND receiver = ? GROUP BY group_key ORDER BY 2",
            (receiver,),
        )
        delivered = 0
        for group_key, _, next_attempt, group_labels in heads:
            if next_attempt > now:
                continue
            limit = self._take_tokens(receiver, 1 << 30, peek=True)
            if limit <= 0:
                break
            rows = self._store.query(
                "SELECT id, attempts, payload FROM alert_outbox WHERE delivered IS NULL"
                " AND receiver = ? AND group_key = ? ORDER BY id LIMIT ?",
                (receiver, group_key, limit),
            )
            self._take_tokens(receiver, len(rows))
            batch = Batch(receiver, [json.loads(p) for _, _, p in rows],
                          json.loads(group_labels), _batch_key(group_key))
            try:
                sender(batch)
            except Exception as exc:
                error = _one_line(exc)
                log.warning(
                    "alert receiver %s: delivery of %d notification(s) failed: %s",
                    receiver, len(rows), error,
                )
                self._fail([(i, a) for i, a, _ in rows], error, now)
                continue
            with self._store.transaction() as conn:
                conn.executemany(
                    "UPDATE alert_outbox SET delivered = ?, last_error = NULL WHERE id = ?",
                    [(self._clock.time(), i) for i, _, _ in rows],
                )
            delivered += len(rows)
        return delivered

    def run(
        self, stop: threading.Event, senders: Mapping[str, Sender], interval: float = 0.2
    ) -> None:
        """Deliver until ``stop`` is set (call ``wake()`` after setting it).

        Idle costs nothing: the loop sleeps until a row is enqueued or the earliest retry
        is due, and polls every ``interval`` seconds only while rows are waiting (the rate
        limit or a backoff holding them)."""
        while not stop.is_set():
            try:
                self.deliver_due(senders)
            except Exception:
                log.exception("alert outbox delivery failed")
            # the earliest group head: rows behind a head wait for it
            rows = self._store.query(
                "SELECT MIN(na) FROM (SELECT next_attempt AS na, MIN(id) FROM alert_outbox"
                " WHERE delivered IS NULL GROUP BY receiver, group_key)")
            nxt = rows[0][0] if rows else None
            timeout = 3600.0 if nxt is None else max(interval, nxt - self._clock.time())
            self._wake.wait(timeout)
            self._wake.clear()
