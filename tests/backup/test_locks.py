"""Repository locks on a real LocalStorage, with real processes."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm_maint.backup.errors import LockedError
from swarm_maint.backup.locks import (
    RepositoryLock,
    list_locks,
    lock_repository,
    remove_all_locks,
    remove_stale_locks,
)
from swarm_maint.backup.storage.local import LocalStorage
from tests.fake_clock import FakeClock

HOST = socket.gethostname()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "repo")


def plant(
    storage: LocalStorage,
    *,
    exclusive: bool,
    hostname: str,
    pid: int,
    now: float,
    ttl: float = 1800.0,
) -> str:
    """Write a lock object as another process would, with no refresher behind it."""
    name = "locks/" + secrets.token_hex(32)
    doc = {"version": 1, "exclusive": exclusive, "hostname": hostname, "pid": pid,
           "time": now, "created": now, "expires": now + ttl}
    storage.write(name, json.dumps(doc).encode())
    return name


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid now names no process
    return proc.pid


def refresher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("repository-lock-")]


def test_shared_locks_coexist_and_exclude_an_exclusive(storage: LocalStorage) -> None:
    a = RepositoryLock.acquire_shared(storage)
    b = RepositoryLock.acquire_shared(storage)
    assert len(list_locks(storage)) == 2
    with pytest.raises(LockedError) as info:
        RepositoryLock.acquire_exclusive(storage)
    message = str(info.value)
    assert f"pid {os.getpid()} on host {HOST}" in message
    assert "swarm-maint backup unlock" in message
    assert len(list_locks(storage)) == 2  # the failed attempt removed its own lock
    a.release()
    b.release()
    b.release()  # twice is harmless
    assert list_locks(storage) == []
    with RepositoryLock.acquire_exclusive(storage) as lock:
        assert [i.name for i in list_locks(storage)] == [lock.name]
        assert all(i.exclusive for i in list_locks(storage))
    assert list_locks(storage) == []


def test_exclusive_excludes_shared_and_exclusive(storage: LocalStorage) -> None:
    with lock_repository(storage, exclusive=True, hostname="node-7", pid=1234):
        for exclusive in (False, True):
            with pytest.raises(LockedError, match="locked exclusively by pid 1234 on host node-7"):
                lock_repository(storage, exclusive)
    with lock_repository(storage, exclusive=False):
        pass
    assert list_locks(storage) == []


def test_lock_object_format(storage: LocalStorage) -> None:
    clock = FakeClock(start=1_900_000_000.0)
    with RepositoryLock.acquire_shared(storage, clock=clock, ttl=100.0) as lock:
        assert len(lock.name) == len("locks/") + 64
        doc = json.loads(storage.read(lock.name).decode("utf-8"))
    assert doc == {"version": 1, "exclusive": False, "hostname": HOST, "pid": os.getpid(),
                   "time": 1_900_000_000.0, "created": 1_900_000_000.0,
                   "expires": 1_900_000_100.0}


def test_lock_of_dead_process_on_this_host_is_removed(storage: LocalStorage) -> None:
    pid = dead_pid()
    stale = plant(storage, exclusive=True, hostname=HOST, pid=pid, now=time.time())
    [info] = list_locks(storage)
    assert info.stale and info.pid == pid
    with RepositoryLock.acquire_exclusive(storage) as lock:
        assert not storage.exists(stale)
        assert [i.name for i in list_locks(storage)] == [lock.name]
        assert lock.stale_removed == 1  # a writer died holding it: look for orphan packs
    with RepositoryLock.acquire_shared(storage) as again:
        assert again.stale_removed == 0


def test_live_lock_of_other_host_blocks_until_it_expires(storage: LocalStorage) -> None:
    clock = FakeClock()
    pid = dead_pid()  # dead here, but it is another host's pid: only expiry makes it stale
    other = plant(storage, exclusive=False, hostname="node-7", pid=pid, now=clock.time(),
                  ttl=600.0)
    with pytest.raises(LockedError, match=f"pid {pid} on host node-7"):
        RepositoryLock.acquire_exclusive(storage, clock=clock)
    assert remove_stale_locks(storage, clock=clock) == []
    assert storage.exists(other)

    clock.advance(601.0)
    [info] = list_locks(storage, clock=clock)
    assert info.stale
    with RepositoryLock.acquire_exclusive(storage, clock=clock):
        assert not storage.exists(other)


def test_remove_stale_and_remove_all(storage: LocalStorage) -> None:
    clock = FakeClock()
    expired = plant(storage, exclusive=True, hostname="node-7", pid=1, now=clock.time() - 99,
                    ttl=10.0)
    dead = plant(storage, exclusive=False, hostname=HOST, pid=dead_pid(), now=clock.time())
    live = plant(storage, exclusive=False, hostname="node-7", pid=1, now=clock.time())
    storage.write("locks/" + "0" * 64, b"garbage")
    assert sorted(remove_stale_locks(storage, clock=clock)) == sorted([expired, dead])
    assert sorted(i.name for i in list_locks(storage, clock=clock)) == sorted(
        [live, "locks/" + "0" * 64])
    assert remove_all_locks(storage) == 2
    assert list_locks(storage) == []


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds a shared lock on ``tmp_path / "repo"`` and sleeps."""
    code = (
        "import sys, time\n"
        "from swarm_maint.backup.locks import RepositoryLock\n"
        "from swarm_maint.backup.storage.local import LocalStorage\n"
        "lock = RepositoryLock.acquire_shared(LocalStorage(sys.argv[1]))\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "repo")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.slow
def test_lock_of_killed_process_does_not_block_forever(
    storage: LocalStorage, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(LockedError, match=f"pid {holder.pid} on host {HOST}"):
        RepositoryLock.acquire_exclusive(storage)
    with RepositoryLock.acquire_shared(storage):
        pass  # shared locks coexist across processes

    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()  # reap it, or the zombie would still answer os.kill(pid, 0)
    assert [i.stale for i in list_locks(storage)] == [True]
    with RepositoryLock.acquire_exclusive(storage) as lock:
        assert [i.name for i in list_locks(storage)] == [lock.name]


def test_refresh_keeps_the_lock_alive(storage: LocalStorage) -> None:
    lock = RepositoryLock.acquire_exclusive(storage, ttl=0.6)
    first = lock.name
    assert len(refresher_threads()) == 1
    time.sleep(1.5)
    [info] = list_locks(storage, hostname="elsewhere")  # judged by expiry alone
    assert not info.stale
    assert info.name == lock.name != first  # rewritten under a new name, old one deleted
    assert info.expires > time.time()
    with pytest.raises(LockedError):
        RepositoryLock.acquire_shared(storage, hostname="elsewhere")

    lock.release()
    assert list_locks(storage) == []
    assert refresher_threads() == []
    assert lock.released


def test_garbage_blocks_sole_access_and_is_reported_to_shared_lockers(
    storage: LocalStorage, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreadable lock (a newer program's, or damage) may hold anything: prune, which
    deletes data, must not go past it; a backup or restore reads past it with a warning."""
    garbage = "locks/" + "f" * 64
    storage.write(garbage, b"\xffnot json")
    wrong = "locks/" + "e" * 64
    storage.write(wrong, json.dumps({"version": 1, "exclusive": "yes"}).encode())
    with pytest.raises(LockedError, match=r"cannot be read.*unlock --remove-all"):
        RepositoryLock.acquire_exclusive(storage)
    with caplog.at_level(logging.WARNING, logger="swarm_maint"), \
            RepositoryLock.acquire_shared(storage):
        pass
    assert garbage in caplog.text and wrong in caplog.text
    infos = {i.name: i for i in list_locks(storage)}
    assert set(infos) == {garbage, wrong}
    assert all(i.error is not None and not i.stale for i in infos.values())
    assert remove_stale_locks(storage) == []  # unreadable objects are not judged stale
    assert remove_all_locks(storage) == 2
    with RepositoryLock.acquire_exclusive(storage):
        pass


def test_wait_retries_until_the_holder_releases(storage: LocalStorage) -> None:
    holder = RepositoryLock.acquire_exclusive(storage)
    timer = threading.Timer(0.5, holder.release)
    timer.start()
    try:
        with RepositoryLock.acquire_shared(storage, wait=5.0) as lock:
            assert holder.released
            assert [i.name for i in list_locks(storage)] == [lock.name]
    finally:
        timer.join()


def test_wait_gives_up(storage: LocalStorage) -> None:
    with RepositoryLock.acquire_shared(storage), pytest.raises(LockedError):
        RepositoryLock.acquire_exclusive(storage, wait=0.5)
    assert list_locks(storage) == []


def test_racing_exclusive_lockers_never_both_win(storage: LocalStorage) -> None:
    n = 8
    start, done = threading.Barrier(n), threading.Barrier(n)
    won: list[RepositoryLock] = []
    failed: list[LockedError] = []

    def attempt() -> None:
        start.wait()
        try:
            lock = RepositoryLock.acquire_exclusive(storage)
        except LockedError as exc:
            failed.append(exc)
            done.wait()
            return
        won.append(lock)
        done.wait()  # hold it until every attempt is over
        lock.release()

    for _ in range(5):
        threads = [threading.Thread(target=attempt) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) <= 1 and len(won) + len(failed) == n
        assert list_locks(storage) == []
        won.clear()
        failed.clear()
