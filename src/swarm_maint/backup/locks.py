"""Repository locks that work on write-once storage and never block forever.

A lock is an object ``locks/<64 hex>`` holding plaintext JSON::

    {"version": 1, "exclusive": bool, "hostname": str, "pid": int,
     "time": float, "created": float, "expires": float}

Object stores have no atomic create-if-absent, so locking is optimistic: write our own
lock first, *then* list ``locks/``. Whoever lists after both writes sees the other, so two
conflicting lockers can never both proceed (at worst both back off). Shared locks
(backup, restore, verify) coexist; an exclusive lock (prune, forget) tolerates no other.

A lock is stale, and removed by the next locker, when it has expired (its holder stopped
refreshing it) or when it was taken on this host by a process that no longer exists.
While held, a daemon thread refreshes the lock every ``ttl / 3`` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import threading
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple, Self

from ..clock import Clock, SystemClock
from ..hostname import local_hostname
from .errors import LockedError
from .storage.base import Storage

__all__ = [
    "LOCK_PREFIX",
    "LockInfo",
    "RepositoryLock",
    "list_locks",
    "lock_repository",
    "remove_all_locks",
    "remove_stale_locks",
]

log = logging.getLogger(__name__)

LOCK_PREFIX = "locks/"
LOCK_VERSION = 1
DEFAULT_TTL = 1800.0
# A lock that vanishes between list and read may be a holder's refresh (new name written
# before the old one is deleted), so the listing is repeated; this bounds the repeats.
_MAX_SCANS = 10


class LockInfo(NamedTuple):
    """One object under ``locks/``; ``error`` is set (and the rest zero) when unreadable."""

    name: str
    exclusive: bool
    hostname: str
    pid: int
    time: float
    created: float
    expires: float
    stale: bool
    error: str | None = None

    def describe(self) -> str:
        mode = "exclusively" if self.exclusive else "(shared)"
        since = datetime.fromtimestamp(self.created, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"locked {mode} by pid {self.pid} on host {self.hostname} since {since}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # os.kill(0, …) / negative pids address process groups, not a holder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except (OverflowError, ValueError):
        return False  # not a pid this system can have
    # A reused pid looks alive until the lock expires: ttl bounds that case.
    return True


def _number(doc: dict[str, Any], key: str) -> float:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} is not a number")
    return float(value)


def _parse(name: str, data: bytes, now: float, hostname: str) -> LockInfo:
    """A LockInfo for ``data``; one with ``error`` set when it is not a version-1 lock."""
    try:
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("version") != LOCK_VERSION:
            raise ValueError("not a version 1 lock")
        exclusive, host, pid = doc["exclusive"], doc["hostname"], doc["pid"]
        if not isinstance(exclusive, bool) or not isinstance(host, str):
            raise TypeError("bad exclusive/hostname")
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError("bad pid")
        stamp, created, expires = (_number(doc, k) for k in ("time", "created", "expires"))
    except (ValueError, KeyError, TypeError) as exc:  # JSON and UTF-8 errors are ValueErrors
        return LockInfo(name, False, "", 0, 0.0, 0.0, 0.0, False, f"unreadable lock: {exc}")
    stale = expires < now or (host == hostname and not _pid_alive(pid))
    return LockInfo(name, exclusive, host, pid, stamp, created, expires, stale)


def _scan(
    storage: Storage, clock: Clock, hostname: str, skip: str = ""
) -> tuple[list[LockInfo], bool]:
    """Every lock but ``skip``, and whether some listed lock vanished before it was read."""
    now = clock.time()
    infos: list[LockInfo] = []
    vanished = False
    for name in storage.list(LOCK_PREFIX):
        if name == skip:
            continue
        try:
            data = storage.read(name)
        except FileNotFoundError:
            vanished = True  # released, removed as stale, or renamed by a refresh
            continue
        infos.append(_parse(name, data, now, hostname))
    return infos, vanished


def list_locks(
    storage: Storage, *, clock: Clock | None = None, hostname: str | None = None
) -> list[LockInfo]:
    """All objects under ``locks/``, unreadable ones included (with ``error`` set)."""
    infos, _ = _scan(storage, clock or SystemClock(), hostname or local_hostname())
    return infos


def remove_stale_locks(
    storage: Storage, *, clock: Clock | None = None, hostname: str | None = None
) -> list[str]:
    """Delete expired locks and this host's locks of dead processes; their names.

    Unreadable objects are left alone: they block nobody (``remove_all_locks`` clears them).
    """
    removed = []
    for info in list_locks(storage, clock=clock, hostname=hostname):
        if info.error is None and info.stale:
            storage.delete(info.name)
            removed.append(info.name)
    return removed


def remove_all_locks(storage: Storage) -> int:
    """Delete every object under ``locks/``, live or not; how many were there."""
    names = storage.list(LOCK_PREFIX)
    for name in names:
        storage.delete(name)
    return len(names)


class RepositoryLock:
    """A held lock; get one with ``acquire_shared``/``acquire_exclusive``, then ``release``."""

    def __init__(
        self,
        storage: Storage,
        exclusive: bool,
        *,
        clock: Clock,
        ttl: float,
        hostname: str,
        pid: int,
    ) -> None:
        self.storage = storage
        self.exclusive = exclusive
        self.clock = clock
        self.ttl = ttl
        self.hostname = hostname
        self.pid = pid
        self.created = clock.time()
        self.name = ""  # current object name; changes on every refresh
        self._mutex = threading.Lock()  # orders refresh against release
        self._stop = threading.Event()
        self._released = False
        self._thread: threading.Thread | None = None
        # stale locks this acquisition removed: a writer died holding one, so the
        # repository may hold packs that no index names (see orphan_check.py)
        self.stale_removed = 0

    # -- acquiring ---------------------------------------------------------------------

    @classmethod
    def acquire_shared(
        cls,
        storage: Storage,
        *,
        clock: Clock | None = None,
        ttl: float = DEFAULT_TTL,
        hostname: str | None = None,
        pid: int | None = None,
        wait: float = 0.0,
    ) -> Self:
        return cls._acquire(storage, False, clock, ttl, hostname, pid, wait)

    @classmethod
    def acquire_exclusive(
        cls,
        storage: Storage,
        *,
        clock: Clock | None = None,
        ttl: float = DEFAULT_TTL,
        hostname: str | None = None,
        pid: int | None = None,
        wait: float = 0.0,
    ) -> Self:
        return cls._acquire(storage, True, clock, ttl, hostname, pid, wait)

    @classmethod
    def _acquire(
        cls,
        storage: Storage,
        exclusive: bool,
        clock: Clock | None,
        ttl: float,
        hostname: str | None,
        pid: int | None,
        wait: float,
    ) -> Self:
        if ttl <= 0 or wait < 0:
            raise ValueError(f"need ttl > 0 and wait >= 0, got ttl={ttl}, wait={wait}")
        clock = clock or SystemClock()
        hostname = hostname or local_hostname()
        pid = os.getpid() if pid is None else pid
        deadline = clock.monotonic() + wait
        removed = 0
        while True:
            lock = cls(storage, exclusive, clock=clock, ttl=ttl, hostname=hostname, pid=pid)
            lock._write_new()
            try:
                conflict = lock._conflict()
            except BaseException:
                storage.delete(lock.name)
                raise
            removed = lock.stale_removed = removed + lock.stale_removed
            if conflict is None:
                lock._thread = threading.Thread(
                    target=lock._refresh_loop, name=f"repository-lock-{lock.name[6:14]}",
                    daemon=True,
                )
                lock._thread.start()
                return lock
            storage.delete(lock.name)  # back off: a racing locker may then proceed
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                raise LockedError(f"repository {storage.location()} is {conflict}")
            # Jitter, so that two lockers backing off together do not collide forever.
            time.sleep(min(remaining, random.uniform(0.2, 1.0)))

    def _conflict(self) -> str | None:
        """Remove stale locks; describe the live lock that forbids ours, if any."""
        for _ in range(_MAX_SCANS):
            infos, vanished = _scan(self.storage, self.clock, self.hostname, skip=self.name)
            for info in infos:
                if info.error is not None and self.exclusive:
                    # a newer program's lock, or damage: sole access cannot be sure of
                    # itself (prune deletes data); a backup or restore only reads it past
                    return (f"locked by {info.name}, which cannot be read ({info.error}); "
                            "if no other program uses the repository, remove it with "
                            "`swarm-maint backup unlock --remove-all`")
                if info.error is not None:
                    log.warning("ignoring %s in %s: %s", info.name, self.storage.location(),
                                info.error)
                elif info.stale:
                    log.info("removing stale lock %s (%s)", info.name, info.describe())
                    self.storage.delete(info.name)
                    self.stale_removed += 1
            if vanished:
                # A holder's refresh writes its new name before deleting the old one, so
                # listing again is sure to show the new name if the old one was a refresh.
                continue
            blocking = [
                i for i in infos
                if i.error is None and not i.stale and (self.exclusive or i.exclusive)
            ]
            if not blocking:
                return None
            blocking.sort(key=lambda i: (not i.exclusive, i.created))
            more = f" (and {len(blocking) - 1} other lock(s))" if len(blocking) > 1 else ""
            return f"{blocking[0].describe()}{more} ({self._hint(blocking[0])})"
        return "locked: its locks kept changing while they were read"

    def _hint(self, holder: LockInfo) -> str:
        """What to do about a live lock: plain ``unlock`` removes only stale ones."""
        until = datetime.fromtimestamp(holder.expires, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if holder.hostname == self.hostname:
            return (f"pid {holder.pid} is running on this host: wait for it to finish, or "
                    f"stop it; `swarm-maint backup unlock` then clears its lock")
        return (f"held from another host; it expires at {until} unless renewed. If that "
                "process is gone, `swarm-maint backup unlock --remove-all` clears it")

    # -- holding -----------------------------------------------------------------------

    def _write_new(self) -> None:
        """Write the lock with fresh times under a new name, then drop the previous name.

        Storage objects are write-once, so a refresh is a new object; a concurrent locker
        always sees at least one of the two names (see ``_conflict``).
        """
        now = self.clock.time()
        doc = {
            "version": LOCK_VERSION, "exclusive": self.exclusive, "hostname": self.hostname,
            "pid": self.pid, "time": now, "created": self.created, "expires": now + self.ttl,
        }
        old, new = self.name, LOCK_PREFIX + secrets.token_hex(32)
        self.storage.write(new, json.dumps(doc, sort_keys=True).encode("utf-8"))
        self.name = new
        if old:
            self.storage.delete(old)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                with self._mutex:
                    if self._stop.is_set():
                        return
                    self._write_new()
            except Exception:
                # Keep trying: a transient storage error must not let the lock expire.
                log.warning("could not refresh lock %s in %s", self.name,
                            self.storage.location(), exc_info=True)

    def release(self) -> None:
        """Stop refreshing and delete the lock; harmless when already released."""
        with self._mutex:
            if self._released:
                return
            self._released = True
            self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.storage.delete(self.name)

    @property
    def released(self) -> bool:
        return self._released

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_repository(
    storage: Storage,
    exclusive: bool,
    *,
    clock: Clock | None = None,
    ttl: float = DEFAULT_TTL,
    hostname: str | None = None,
    pid: int | None = None,
    wait: float = 0.0,
) -> RepositoryLock:
    """``RepositoryLock.acquire_exclusive`` or ``acquire_shared``, by ``exclusive``."""
    acquire = RepositoryLock.acquire_exclusive if exclusive else RepositoryLock.acquire_shared
    return acquire(storage, clock=clock, ttl=ttl, hostname=hostname, pid=pid, wait=wait)
