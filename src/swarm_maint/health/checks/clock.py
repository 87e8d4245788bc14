"""Clock synchronisation from the kernel's NTP state (adjtimex, read-only).

Whatever daemon disciplines the clock (chrony, ntpd, systemd-timesyncd), it tells the
kernel through adjtimex whether the clock is synchronised and how large the error is;
reading it back with ``modes = 0`` changes nothing and needs no privilege. In a
container the kernel's state is the host's, and may well read unsynchronised.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import NamedTuple

from ..check import CheckResult, HealthCheck, HealthContext

__all__ = ["STA_UNSYNC", "TIME_ERROR", "AdjtimexReading", "ClockSyncCheck", "adjtimex",
           "create"]

TIME_ERROR = 5
STA_UNSYNC = 0x0040
_STATES = {0: "TIME_OK", 1: "TIME_INS", 2: "TIME_DEL", 3: "TIME_OOP", 4: "TIME_WAIT",
           5: "TIME_ERROR"}


class AdjtimexReading(NamedTuple):
    state: int  # adjtimex's return value: TIME_OK … TIME_ERROR
    status: int  # STA_* flags
    maxerror_us: int
    esterror_us: int


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (glibc and musl, 32 and 64 bit: longs are native)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


def adjtimex() -> AdjtimexReading:
    """The kernel's clock state; raises OSError where adjtimex is unavailable."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    try:
        fn = libc.adjtimex
    except AttributeError:
        raise OSError("adjtimex is not available on this platform") from None
    fn.argtypes = [ctypes.POINTER(_Timex)]
    fn.restype = ctypes.c_int
    tx = _Timex()
    tx.modes = 0  # read only
    rc = fn(ctypes.byref(tx))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {os.strerror(err)}")
    return AdjtimexReading(int(rc), int(tx.status), int(tx.maxerror), int(tx.esterror))


class ClockSyncCheck:
    name = "clock_sync"
    level = 1

    def __init__(self, ctx: HealthContext,
                 read: Callable[[], AdjtimexReading] = adjtimex) -> None:
        self._ctx = ctx
        self._read = read
        self.interval = ctx.config.interval
        self.timeout = ctx.config.timeout

    def run(self) -> CheckResult:
        try:
            state, status, maxerror_us, esterror_us = self._read()
        except OSError as exc:
            return CheckResult(self.name, "UNKNOWN", f"cannot read the kernel clock state: {exc}")
        details = {"state": _STATES.get(state, str(state)), "status_flags": status,
                   "unsynchronised": bool(status & STA_UNSYNC) or state == TIME_ERROR,
                   "maxerror_seconds": maxerror_us / 1e6, "esterror_seconds": esterror_us / 1e6}
        if details["unsynchronised"]:
            return CheckResult(
                self.name, "WARNING",
                "system clock not synchronised (is chrony/ntpd/systemd-timesyncd running? "
                "check `chronyc tracking` or `timedatectl`)", "investigate", details)
        limit = self._ctx.config.thresholds.clock_offset_warning
        if esterror_us / 1e6 > limit:
            return CheckResult(
                self.name, "WARNING",
                f"estimated clock error {esterror_us / 1e6:.3g}s is above {limit:g}s: check "
                "the time servers the NTP daemon uses (`chronyc sources`)", "investigate",
                details)
        return CheckResult(self.name, "OK",
                           f"clock synchronised (estimated error {esterror_us / 1e3:.3g} ms)",
                           None, details)


def create(ctx: HealthContext) -> list[HealthCheck]:
    return [ClockSyncCheck(ctx)]
