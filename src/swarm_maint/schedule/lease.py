"""The node's maintenance lease: one backup, update or active diagnostic at a time.

The lease is a row in the state database (``leases``), taken in an immediate
transaction, so the agent's jobs and CLI commands (``update apply``, ``jobs run``)
exclude each other across processes. The holder renews it while it works; a lease whose
holder died is free at once when the holder was a process on this host that no longer
exists (pid and start time no longer match), and in any case once it expires.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from types import ModuleType
from typing import NamedTuple

from ..clock import Clock
from ..hostname import local_hostname
from ..store import Store
from .errors import LeaseBusyError

__all__ = ["Lease", "LeaseInfo", "process_alive", "process_identity", "start_mark"]

MAINTENANCE = "maintenance"


@cache
def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()[:8]
    except OSError:
        return None


def start_mark(pid: int) -> str:
    """When process ``pid`` started, as a mark that never changes while it lives.

    On Linux: the boot id and the kernel's start time in clock ticks since boot. Not
    psutil's ``create_time``: that adds /proc/stat's ``btime``, which the kernel derives
    from the wall clock and which moves by a second between readings on a host whose clock
    is adjusted, so two processes could disagree about one process's start. Elsewhere the
    create time, to the hundredth of a second. Raises ``psutil.NoSuchProcess``.
    """
    boot = _boot_id()
    if boot is not None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            raise _psutil().NoSuchProcess(pid) from None
        # fields after the command name, which may hold spaces and parentheses
        ticks = stat[stat.rindex(b")") + 2:].split()[19].decode()
        return f"{boot}+{ticks}"
    return f"{_psutil().Process(pid).create_time():.2f}"


def _psutil() -> ModuleType:
    """psutil, imported only where needed: on Linux a lease never needs it unless a
    holder is gone or was written by an older version, and the import costs ~12 ms at the
    start of every backup."""
    import psutil

    return psutil


@cache
def process_identity() -> str:
    """``host:pid:start`` of this process: unique even when pids are reused."""
    return f"{local_hostname()}:{os.getpid()}:{start_mark(os.getpid())}"


def process_alive(identity: str) -> bool:
    """Whether the process named by ``identity`` still runs (True when unknowable)."""
    host, _, rest = identity.partition(":")
    pid_text, _, start_text = rest.partition(":")
    if host != local_hostname():
        return True  # another host: only the expiry can tell
    try:
        pid = int(pid_text)
        if "+" in start_text or _boot_id() is None:
            return start_mark(pid) == start_text
        # a create time, as written before start marks: btime may have moved since
        created: float = _psutil().Process(pid).create_time()
        return abs(created - float(start_text)) < 1.5
    except (ValueError, IndexError):
        return False
    except Exception as exc:
        psutil = _psutil()
        if isinstance(exc, psutil.NoSuchProcess):
            return False
        if isinstance(exc, (psutil.Error, OSError)):
            return True
        raise


class LeaseInfo(NamedTuple):
    owner: str          # what holds it: a job name, or "cli: update apply"
    holder: str         # process identity
    acquired: float
    expires: float

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.acquired, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        pid = self.holder.split(":")[1] if self.holder.count(":") >= 2 else "?"
        return f"{self.owner} (pid {pid}) since {since}"

    def to_json(self) -> dict[str, object]:
        return {"owner": self.owner, "holder": self.holder, "acquired": self.acquired,
                "expires": self.expires}


class Lease:
    def __init__(self, store: Store, clock: Clock, ttl: float = 120.0,
                 name: str = MAINTENANCE) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self.name = name

    def holder(self) -> LeaseInfo | None:
        """The live holder, or None when the lease is free."""
        rows = self.store.query("SELECT owner, holder, acquired, expires FROM leases"
                                " WHERE name = ?", (self.name,))
        if not rows:
            return None
        info = LeaseInfo(*rows[0])
        if info.expires <= self.clock.time() or not process_alive(info.holder):
            return None
        return info

    def try_acquire(self, owner: str) -> LeaseInfo | None:
        """Take the lease for ``owner``; None when someone else holds it."""
        me = process_identity()
        now = self.clock.time()
        with self.store.transaction() as conn:
            row = conn.execute("SELECT owner, holder, acquired, expires FROM leases"
                               " WHERE name = ?", (self.name,)).fetchone()
            if row is not None:
                cur = LeaseInfo(*row)
                live = cur.expires > now and process_alive(cur.holder)
                if live and not (cur.holder == me and cur.owner == owner):
                    return None
            conn.execute("INSERT OR REPLACE INTO leases (name, owner, holder, acquired, expires)"
                         " VALUES (?, ?, ?, ?, ?)", (self.name, owner, me, now, now + self.ttl))
        return LeaseInfo(owner, me, now, now + self.ttl)

    def renew(self, owner: str) -> bool:
        """Push the expiry on; False when the lease was lost (it expired and was taken)."""
        with self.store.transaction() as conn:
            cur = conn.execute("UPDATE leases SET expires = ? WHERE name = ? AND owner = ?"
                               " AND holder = ?", (self.clock.time() + self.ttl, self.name,
                                                   owner, process_identity()))
            return cur.rowcount == 1

    def release(self, owner: str) -> None:
        with self.store.transaction() as conn:
            conn.execute("DELETE FROM leases WHERE name = ? AND owner = ? AND holder = ?",
                         (self.name, owner, process_identity()))

    @contextlib.contextmanager
    def hold(self, owner: str) -> Iterator[LeaseInfo]:
        """Hold the lease for a block, renewing it on a thread; LeaseBusyError if taken."""
        info = self.try_acquire(owner)
        if info is None:
            cur = self.holder()
            who = cur.describe() if cur is not None else "another process"
            raise LeaseBusyError(f"the node's maintenance lease is held by {who}; try again "
                                 "when it finishes (`swarm-maint jobs list`)")
        with self.keep_renewed(owner):
            yield info

    @contextlib.contextmanager
    def keep_renewed(self, owner: str) -> Iterator[None]:
        """Renew the held lease every third of its ttl until the block ends, then free it."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.ttl / 3):
                self.renew(owner)

        t = threading.Thread(target=beat, name="lease-renew", daemon=True)
        t.start()
        try:
            yield
        finally:
            done.set()
            t.join(timeout=5)
            self.release(owner)
