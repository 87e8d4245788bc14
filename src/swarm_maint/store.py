"""The SQLite state store: WAL mode, named migrations recorded in a table.

One connection guarded by a lock is shared by the agent's threads; other processes
(the CLI) open their own. Each migration runs in its own transaction together with
its record in ``schema_migrations``, so a crash never leaves a half-applied step.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import StateError

__all__ = ["MIGRATIONS", "Store"]

# (name, SQL). Append only: never edit or reorder a migration that has shipped.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_metric_history",
        """
        CREATE TABLE metric_series (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            labels TEXT NOT NULL,              -- canonical JSON object, sorted keys
            UNIQUE (name, labels)
        );
        CREATE TABLE metric_history (
            series_id INTEGER NOT NULL REFERENCES metric_series(id),
            ts REAL NOT NULL,                  -- start of the step, unix seconds
            avg REAL NOT NULL,
            min REAL NOT NULL,
            max REAL NOT NULL,
            last REAL NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (series_id, ts)
        ) WITHOUT ROWID;
        CREATE INDEX metric_history_ts ON metric_history(ts);
        """,
    ),
    (
        "0002_health",
        """
        CREATE TABLE health_state (
            check_name TEXT PRIMARY KEY,
            status TEXT NOT NULL,              -- the condition after hysteresis
            raw_status TEXT NOT NULL,          -- the last run's own status
            message TEXT NOT NULL,
            action TEXT,
            details TEXT NOT NULL,             -- JSON
            since REAL NOT NULL,               -- when the condition took this status
            updated REAL NOT NULL,
            failures INTEGER NOT NULL,         -- consecutive non-OK runs
            passes INTEGER NOT NULL            -- consecutive OK runs
        );
        CREATE TABLE health_transitions (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            check_name TEXT NOT NULL,
            from_status TEXT NOT NULL,
            to_status TEXT NOT NULL,
            message TEXT NOT NULL,
            action TEXT
        );
        CREATE INDEX health_transitions_ts ON health_transitions(ts);
        CREATE TABLE xid_events (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,                  -- when the agent read it
            pci_bus_id TEXT NOT NULL,
            code INTEGER NOT NULL,
            line TEXT NOT NULL,
            source_key TEXT NOT NULL UNIQUE    -- dedup across restarts (source + position)
        );
        CREATE INDEX xid_events_ts ON xid_events(ts);
        CREATE TABLE xid_sources (
            source TEXT PRIMARY KEY,
            position TEXT NOT NULL             -- how far the source was read (offset/seq)
        )
        """,
    ),
    (
        "0003_alerts_outbox",
        """
        CREATE TABLE alert_outbox (
            id INTEGER PRIMARY KEY,
            receiver TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            kind TEXT NOT NULL,                -- firing | resolved
            payload TEXT NOT NULL,             -- JSON: the alert in Alertmanager's shape
            created REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,
            last_error TEXT,
            delivered REAL                     -- NULL until sent (or given up)
        );
        CREATE INDEX alert_outbox_due ON alert_outbox(delivered, next_attempt)
        """,
    ),
    (
        "0004_alert_routing_silences",
        """
        ALTER TABLE alert_outbox ADD COLUMN group_key TEXT NOT NULL DEFAULT '';
        ALTER TABLE alert_outbox ADD COLUMN group_labels TEXT NOT NULL DEFAULT '{}';
        CREATE TABLE alert_state (             -- firing alerts, restored after a restart
            fingerprint TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            rule_group TEXT NOT NULL,
            labels TEXT NOT NULL,              -- JSON
            annotations TEXT NOT NULL,         -- JSON
            active_since REAL NOT NULL,
            fired_at REAL NOT NULL,
            value REAL NOT NULL
        );
        CREATE TABLE alert_receiver_state (    -- what each receiver was last told
            receiver TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            alert TEXT NOT NULL,               -- JSON: labels and annotations, for listings
            status TEXT NOT NULL,              -- 'firing': queued or sent, resolve due
            last_enqueued REAL NOT NULL,
            PRIMARY KEY (receiver, fingerprint)
        ) WITHOUT ROWID;
        CREATE TABLE alert_silences (
            id TEXT PRIMARY KEY,
            matchers TEXT NOT NULL,            -- JSON list of matcher strings
            starts REAL NOT NULL,
            ends REAL NOT NULL,
            comment TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created REAL NOT NULL
        );
        CREATE INDEX alert_silences_ends ON alert_silences(ends);
        CREATE TABLE maintenance_windows (
            id TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            matchers TEXT NOT NULL,            -- JSON list, empty: the configured defaults
            started REAL NOT NULL,
            deadline REAL NOT NULL,            -- held alerts are released after this at most
            ended REAL                         -- NULL while the maintenance runs
        )
        """,
    ),
    (
        "0005_updates",
        """
        CREATE TABLE update_seen (
            manager TEXT NOT NULL,             -- apt, or the name of a pip environment
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            first_seen REAL NOT NULL,          -- when a plan first offered this version
            PRIMARY KEY (manager, name, version)
        ) WITHOUT ROWID;
        CREATE TABLE update_runs (
            id INTEGER PRIMARY KEY,
            started REAL NOT NULL,
            ended REAL,
            status TEXT NOT NULL,              -- running, awaiting-reboot, succeeded, failed
            mode TEXT NOT NULL,                -- routine, security, driver
            trigger TEXT NOT NULL,             -- cli, agent
            items TEXT NOT NULL,               -- JSON: the plan items this run installs
            state TEXT NOT NULL,               -- JSON: what later steps need (versions…)
            error TEXT
        );
        CREATE TABLE update_steps (
            run_id INTEGER NOT NULL REFERENCES update_runs(id),
            seq INTEGER NOT NULL,
            step TEXT NOT NULL,
            status TEXT NOT NULL,              -- running, done, skipped, failed
            started REAL NOT NULL,
            ended REAL,
            detail TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID
        """,
    ),
    (
        "0006_jobs",
        """
        CREATE TABLE job_runs (
            id INTEGER PRIMARY KEY,
            job TEXT NOT NULL,
            slot REAL,                         -- the scheduled time it is for, NULL: by hand
            trigger TEXT NOT NULL,             -- schedule, catch-up, retry, recovery, cli, api
            attempt INTEGER NOT NULL,
            started REAL NOT NULL,
            ended REAL,
            status TEXT NOT NULL,              -- waiting, running, succeeded, failed,
                                               -- skipped, missed, interrupted
            summary TEXT NOT NULL,
            details TEXT NOT NULL,             -- JSON object
            holder TEXT NOT NULL,              -- host:pid:start of the process running it
            final INTEGER NOT NULL DEFAULT 1   -- 0: a failed attempt that is retried
        );
        CREATE INDEX job_runs_by_job ON job_runs (job, id);
        CREATE TABLE job_state (
            job TEXT PRIMARY KEY,
            first_seen REAL NOT NULL,          -- staleness counts from here before a success
            done_slot REAL,                    -- the latest slot handled (ran, missed …)
            last_success REAL                  -- end of the last successful run
        ) WITHOUT ROWID;
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,             -- maintenance
            owner TEXT NOT NULL,               -- the job or command holding it
            holder TEXT NOT NULL,              -- host:pid:start of its process
            acquired REAL NOT NULL,
            expires REAL NOT NULL
        ) WITHOUT ROWID
        """,
    ),
]


class Store:
    """A SQLite database in WAL mode with the project's migrations applied."""

    def __init__(self, path: Path | str, migrations: Sequence[tuple[str, str]] = MIGRATIONS):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"{self.path}: cannot open state database: {exc}") from None
        self._lock = threading.RLock()
        self._migrate(migrations)

    def _migrate(self, migrations: Sequence[tuple[str, str]]) -> None:
        try:
            with self._lock:
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
                )
                done = {r[0] for r in self._conn.execute("SELECT name FROM schema_migrations")}
                for name, sql in migrations:
                    if name in done:
                        continue
                    # executescript would commit on its own; run statements one by one
                    # inside an explicit transaction instead.
                    self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        for stmt in _split_sql(sql):
                            self._conn.execute(stmt)
                        self._conn.execute(
                            "INSERT INTO schema_migrations VALUES (?, strftime('%s','now'))",
                            (name,),
                        )
                        self._conn.execute("COMMIT")
                    except BaseException:
                        self._conn.execute("ROLLBACK")
                        raise
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot migrate state database: {exc}") from None

    def applied_migrations(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "SELECT name FROM schema_migrations ORDER BY name")]

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block atomically; roll back if it raises."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._conn.execute(sql, params))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (migrations contain no ';' inside literals)."""
    return [s.strip() for s in script.split(";") if s.strip()]
