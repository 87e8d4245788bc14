import ctypes
import ctypes.util

from swarm_maint.backup.memory import limit_heap_growth


def test_mmap_threshold_is_fixed_on_glibc() -> None:
    assert ctypes.util.find_library("c") is not None  # Debian: glibc
    assert limit_heap_growth() is True
    assert limit_heap_growth() is True  # idempotent
