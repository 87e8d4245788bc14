"""Process identities of lease holders and job runs: alive exactly while that process runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import psutil
import pytest

from swarm_maint.schedule import lease as lease_mod
from swarm_maint.schedule.lease import process_alive, process_identity, start_mark

PRINT_AND_WAIT = ("import sys; from swarm_maint.schedule.lease import process_identity as p;"
                  " print(p(), flush=True); sys.stdin.read()")


def _child(prelude: str = "") -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", prelude + PRINT_AND_WAIT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _end(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    proc.wait(timeout=30)
    proc.stdout.close()


def test_another_process_is_alive_until_it_exits() -> None:
    proc, ident = _child()
    try:
        assert ident.startswith(f"{socket.gethostname()}:{proc.pid}:")
        assert ident != process_identity()
        assert process_alive(ident)
    finally:
        _end(proc)
    assert not process_alive(ident)


def test_alive_when_the_kernels_boot_time_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/stat's btime follows the wall clock and moves by a second on hosts whose clock
    is adjusted; a holder must not look dead (and lose its lease) when it does."""
    import psutil._pslinux as pslinux

    proc, ident = _child()
    try:
        before = psutil.Process(proc.pid).create_time()
        real = pslinux.boot_time
        monkeypatch.setattr(pslinux, "boot_time", lambda: real() + 1.0)
        # the condition is real: psutil's create time of the same process has moved
        assert psutil.Process(proc.pid).create_time() == pytest.approx(before + 1.0)
        assert process_alive(ident)
    finally:
        _end(proc)


def test_a_reused_pid_is_not_the_holder() -> None:
    ident = process_identity()
    host, pid, mark = ident.split(":")
    boot, ticks = mark.split("+")
    assert process_alive(ident)
    assert not process_alive(f"{host}:{pid}:{boot}+{int(ticks) + 1}")  # same pid, later start
    assert not process_alive(f"{host}:{pid}:00000000+{ticks}")  # same start, another boot


def test_identities_written_before_start_marks_are_read_with_a_second_of_slack() -> None:
    host, pid = socket.gethostname(), os.getpid()
    created = psutil.Process(pid).create_time()
    assert process_alive(f"{host}:{pid}:{created + 1.0:.2f}")
    assert not process_alive(f"{host}:{pid}:{created - 30:.2f}")


def test_garbage_and_other_hosts() -> None:
    host = socket.gethostname()
    assert not process_alive(f"{host}:notapid:1+2")
    assert not process_alive(f"{host}:{os.getpid()}:no-mark")
    assert process_alive("some-other-host:1:abc+1")  # only the expiry can tell


def test_a_command_name_with_spaces_and_parentheses() -> None:
    # PR_SET_NAME (15) renames the process as /proc/PID/stat shows it
    proc, ident = _child("import ctypes; ctypes.CDLL(None).prctl(15, b'py) (x y) 1', 0, 0, 0);")
    try:
        assert psutil.Process(proc.pid).name() == "py) (x y) 1"
        assert ident.endswith(":" + start_mark(proc.pid))
        assert process_alive(ident)
    finally:
        _end(proc)
    with pytest.raises(psutil.NoSuchProcess):
        start_mark(proc.pid)


def test_identity_without_a_boot_id_uses_the_create_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease_mod, "_boot_id", lambda: None)  # e.g. no /proc
    mark = start_mark(os.getpid())
    assert float(mark) == pytest.approx(psutil.Process(os.getpid()).create_time(), abs=0.01)
    assert process_alive(f"{socket.gethostname()}:{os.getpid()}:{mark}")
