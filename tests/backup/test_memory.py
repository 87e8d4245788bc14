"""glibc heap tuning of backup processes, observed through glibc itself."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

from swarm_maint.backup.memory import limit_heap_growth

# Defines count_arenas(): glibc's malloc arenas in this process, from malloc_info's XML.
COUNT_ARENAS = r"""
def count_arenas():
    import ctypes, os, tempfile
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    path = tempfile.mktemp()
    fp = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    with open(path) as f:
        xml = f.read()
    os.unlink(path)
    return xml.count("<heap nr=")
"""

# Runs in a fresh interpreter: threads allocate and free multi-MiB blocks the way a backup's
# reading and sealing threads do; reports glibc's arena count (malloc_info) and whether a
# 5 MiB block is still mmapped after one of that size was freed (mallinfo2's hblks).
PROBE = COUNT_ARENAS + r"""
import ctypes, json, sys, threading
from swarm_maint.backup.memory import limit_heap_growth
from swarm_maint.backup.memory import single_arena
applied = (limit_heap_growth() if sys.argv[1] == "tuned"
           else single_arena() if sys.argv[1] == "arena" else None)
libc = ctypes.CDLL("libc.so.6")

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2

def work():
    for n in range(20):
        b = bytearray(1 << 20)  # a chunk-sized block from this thread's arena
        b[::4096] = b"x" * len(b[::4096])
        del b

threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
big = bytearray(5 << 20); del big
before = libc.mallinfo2().hblks
big = bytearray(5 << 20)
mmapped = libc.mallinfo2().hblks > before
del big
print(json.dumps({"applied": applied, "arenas": count_arenas(), "mmapped": mmapped}))
"""


def _probe(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_glibc_is_present() -> None:
    assert ctypes.util.find_library("c") is not None  # Debian: glibc
    assert limit_heap_growth() is True
    assert limit_heap_growth() is True  # idempotent


def test_one_arena_and_a_fixed_mmap_threshold() -> None:
    tuned = _probe("tuned")
    assert tuned == {"applied": True, "arenas": 1, "mmapped": True}


def test_restore_gets_one_arena_and_keeps_glibc_s_threshold() -> None:
    assert _probe("arena") == {"applied": True, "arenas": 1, "mmapped": False}


def test_untuned_glibc_differs_so_the_probe_can_tell() -> None:
    plain = _probe("plain")
    assert isinstance(plain["arenas"], int) and plain["arenas"] > 1  # threads got their own
    assert plain["mmapped"] is False  # glibc raised its threshold after the free
