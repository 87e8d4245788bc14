"""Direct I/O (``O_DIRECT``) for the bulk data of backups and restores.

Backups read whole datasets once and write packs that are not read again soon; restores
write files nobody has read yet. Going through the page cache costs a kernel copy of
every byte and fills the cache with data that evicts the workloads' own files; on VMs
whose fresh memory pages are expensive it was also the largest cost of a backup (about
half its CPU time). With ``O_DIRECT`` the device reads into and writes from our own
page-aligned buffers, which are reused, so no page is allocated per byte moved.

Only the aligned middle of a transfer is direct: an unaligned tail is written through
the page cache after ``O_DIRECT`` is switched off on the descriptor. Filesystems that
refuse ``O_DIRECT`` (EINVAL) get ordinary buffered I/O, so nothing depends on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import threading

__all__ = [
    "ALIGN",
    "AlignedBuffer",
    "ThreadBuffers",
    "address_of",
    "align_up",
    "pwrite_all",
    "read_direct_into",
    "set_direct",
]

ALIGN = 4096  # covers 512-byte and 4 KiB logical blocks
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def align_up(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def address_of(buf: memoryview | bytearray | mmap.mmap) -> int | None:
    """The address of a writable buffer, or None (read-only buffers cannot be asked)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    except (TypeError, ValueError):
        return None


class AlignedBuffer:
    """A page-aligned anonymous mapping with a fill level; grows by reallocation."""

    def __init__(self, capacity: int) -> None:
        self._map = mmap.mmap(-1, align_up(max(capacity, ALIGN)))
        self.view = memoryview(self._map)
        self.n = 0

    @property
    def capacity(self) -> int:
        return len(self._map)

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` more bytes after the fill level."""
        need = self.n + extra
        if need <= len(self._map):
            return
        bigger = mmap.mmap(-1, align_up(max(need, 2 * len(self._map))))
        bigger[:self.n] = self.view[:self.n]
        old, self._map = self._map, bigger
        self.view.release()
        self.view = memoryview(bigger)
        # a view of the old map may still be alive (kept by an exception's traceback):
        # it is then unmapped when that view goes
        with contextlib.suppress(BufferError):
            old.close()

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Copy ``data`` in; returns the offset it starts at."""
        start = self.n
        self.reserve(len(data))
        self.view[start:start + len(data)] = data
        self.n = start + len(data)
        return start

    def data(self) -> memoryview:
        return self.view[:self.n]

    def close(self) -> None:
        self.view.release()
        with contextlib.suppress(BufferError):  # as in reserve
            self._map.close()


class ThreadBuffers:
    """One ``AlignedBuffer`` per thread, created on first use and all unmapped by
    ``close`` once the threads are done (their pages stay mapped between uses)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._local = threading.local()
        self._all: list[AlignedBuffer] = []
        self._lock = threading.Lock()

    def get(self) -> AlignedBuffer:
        buf: AlignedBuffer | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = AlignedBuffer(self._capacity)
            with self._lock:
                self._all.append(buf)
        return buf

    def close(self) -> None:
        with self._lock:
            bufs, self._all = self._all, []
        for buf in bufs:
            buf.close()


def set_direct(fd: int, on: bool) -> bool:
    """Switch ``O_DIRECT`` on a descriptor; False where the filesystem refuses it."""
    if not _O_DIRECT:
        return False
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    want = flags | _O_DIRECT if on else flags & ~_O_DIRECT
    if want == flags:
        return True
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, want)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def _is_direct(fd: int) -> bool:
    return bool(_O_DIRECT and fcntl.fcntl(fd, fcntl.F_GETFL) & _O_DIRECT)


def pwrite_all(fd: int, data: memoryview, offset: int = 0) -> None:
    """Write all of ``data`` at ``offset``: the aligned part directly when ``data``
    starts on a page and ``offset`` is aligned, the rest (or all of it, where the
    filesystem refuses) through the page cache. Leaves ``O_DIRECT`` off."""
    direct = 0
    addr = address_of(data) if len(data) >= ALIGN and offset % ALIGN == 0 else None
    if addr is not None and addr % ALIGN == 0 and set_direct(fd, True):
        direct = len(data) & ~(ALIGN - 1)
        done = 0
        try:
            while done < direct:
                done += os.pwrite(fd, data[done:direct], offset + done)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        finally:
            set_direct(fd, False)
        direct = done & ~(ALIGN - 1)  # an EINVAL midway: the rest goes buffered
    rest = data[direct:]
    pos = offset + direct
    while rest:
        n = os.pwrite(fd, rest, pos)
        rest = rest[n:]
        pos += n


def read_direct_into(fd: int, dest: memoryview, offset: int) -> int:
    """Fill ``dest`` from the file at ``offset`` until full or end of file; the
    descriptor's position is not used, so several threads may read one file at once.

    ``dest`` must start on a page and be a multiple of ``ALIGN`` long, and ``offset`` be
    aligned, when the descriptor is in ``O_DIRECT``; an EINVAL (a filesystem that accepts
    the flag but not the transfer) switches it off and carries on buffered."""
    got = 0
    while got < len(dest):
        try:
            n = os.preadv(fd, [dest[got:]], offset + got)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not _is_direct(fd):
                raise
            set_direct(fd, False)
            continue
        if n == 0:
            break
        got += n
        if n % ALIGN and _is_direct(fd):
            set_direct(fd, False)  # unaligned from here: the end of file, or a file growing
    return got
