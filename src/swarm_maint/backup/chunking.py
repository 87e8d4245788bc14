"""Content-defined chunking of a file read with direct I/O into reused buffers.

pyfastcdc's own stream chunker reads through the page cache into a fresh buffer per
file and moves its remainder after every chunk. This one reads 2 or 4 MiB at a time
(``read_size_for``) with ``O_DIRECT`` into a page-aligned buffer that a thread keeps,
runs FastCDC over it, and carries the last, unfinished chunk over to the next read: it
is placed so that it ends on a page boundary, right before the next read.

A cut is final when FastCDC found it inside the data read so far, or when the chunk has
``max_size`` bytes: FastCDC decides a cut from the bytes before it alone, so more data
cannot move it. Only a chunk that runs to the end of what was read (short of
``max_size``, before the end of the file) is carried over. So this cuts a file at the
same places as pyfastcdc's stream chunker, and repositories stay deduplicated; it
carries one chunk (~1 MiB) instead of the ``max_size`` a conservative rule would, and
copies and scans that much less.

Given several buffers and a thread pool, reads go round the buffers at explicit offsets:
while one buffer is chunked, the others are being filled, so the disk always has reads
queued and a file whose chunks are mostly stored already (a fine-tuned checkpoint) is
bound by the disk, not by the disk plus the CPU. Each read waits in its own pool thread:
a reading thread must take the GIL back after every read, and beside the chunking and
hashing threads that can take a switch interval (5 ms) or more, which with one read in
flight left the disk idle (cold 4 MiB direct reads of a 256 MiB file: 924 MiB/s alone,
533 MiB/s beside two busy Python threads).

All reads are direct, even one large file read alone. The page cache would bring the
kernel's readahead, but costs a fresh page for every 4 KiB read, and on a VM that hands
freed memory back to its host (virtio-balloon free page reporting, which the
benchmark's VM has) each fresh page is a fault the host must fill: after the page
cache was dropped, reading the benchmark's 256 MiB fine-tuned checkpoint took
0.38-0.58 s through the page cache against 0.16-0.23 s with direct reads into reused
buffers. Nor does a backup evict the workloads' own cached files.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Executor, Future

from pyfastcdc import FastCDC

from .direct_io import AlignedBuffer, align_up, read_direct_into, set_direct

__all__ = ["READ_SIZE", "SOLO_READ_SIZE", "SOLO_RING", "buffer_size", "cut_fd", "read_size_for",
           "ring_depth"]

READ_SIZE = 2 << 20  # each reading thread has two such windows: memory is the limit
SOLO_READ_SIZE = 4 << 20  # for a thread that reads the only large file
SOLO_RING = 4


def read_size_for(readers: int) -> int:
    """Bytes per read when ``readers`` threads read large files at once. One alone gets
    larger reads: a chunk that runs past the end of a read is scanned again from its
    start after the next one, which costs FastCDC about a fifth more work with 2 MiB
    reads and a tenth with 4 MiB; several share the memory of the windows."""
    return SOLO_READ_SIZE if readers <= 1 else READ_SIZE


def ring_depth(readers: int) -> int:
    """Buffers per reading thread: reads in flight, plus the one being chunked. One
    file read alone gets four (a benchmark's fine-tuned copy, file phase medians of 8
    cold runs: 0.27 s with four, 0.30 s with three, 0.31 s with two 4 MiB buffers
    through the page cache); several files keep each other's reads queued with two."""
    return SOLO_RING if readers <= 1 else 2


def buffer_size(max_size: int, read_size: int = READ_SIZE) -> int:
    """Capacity ``cut_fd`` needs in each buffer: room for a carried-over chunk, then one
    read."""
    return align_up(max_size) + read_size


def _read(fd: int, dest: memoryview, offset: int) -> int:
    with dest:  # released even when the read fails: the buffer can then be unmapped
        return read_direct_into(fd, dest, offset)


def cut_fd(chunker: FastCDC, fd: int, bufs: Sequence[AlignedBuffer], max_size: int,
           read_size: int = READ_SIZE, *, reader: Executor | None = None,
           offset: int = 0) -> Generator[memoryview, None, None]:
    """Yield the chunks of the file open on ``fd`` from ``offset`` (a multiple of 4096)
    on. Each view is valid only until the next one is asked for. ``read_size`` must be
    a multiple of 4096; OSError from reads propagates. With ``reader`` and several
    buffers, reads go round the buffers, each on ``reader`` at its own offset, so that
    all but the one being chunked are being filled (``reader`` needs as many threads
    for them all to be in flight); the first short read is the end of the file."""
    head = align_up(max_size)
    ring = list(bufs) if reader is not None else list(bufs[:1])
    if (not ring or any(b.capacity < head + read_size for b in ring) or read_size % 4096
            or offset % 4096):
        raise ValueError("no buffer, buffer too small, or read size or offset unaligned")
    views = [b.view for b in ring]
    inflight: deque[Future[int]] = deque()  # in the order of the buffers they fill
    next_off = offset

    def read_into(i: int) -> None:
        nonlocal next_off
        assert reader is not None
        inflight.append(reader.submit(_read, fd, views[i][head:head + read_size],
                                      next_off))
        next_off += read_size

    this = 0  # the buffer being filled and chunked
    carry_in, start, end = 0, head, head  # where the unfinished chunk lies
    set_direct(fd, True)  # where refused, the same reads go through the page cache
    try:
        if len(ring) > 1:
            for i in range(len(ring)):
                read_into(i)
        while True:
            view = views[this]
            rem = end - start
            if rem and (carry_in != this or start != head - rem):
                # < max_size, right before the read (memoryview assignment copies like
                # memmove); this also frees the previous buffer for another read
                view[head - rem:head] = views[carry_in][start:end]
            if len(ring) == 1:
                n = _read(fd, view[head:head + read_size], next_off)
                next_off += n
            else:
                if carry_in != this:
                    read_into(carry_in)
                n = inflight.popleft().result()
            eof = n < read_size
            start, end = head - rem, head + n
            if start == end:
                return
            for chunk in chunker.cut_buf(view[start:end]):
                length = chunk.length
                del chunk  # its view would keep the buffer mapped from a traceback
                if not eof and start + length == end and length < max_size:
                    break  # runs to the end of the read: the next read may move this cut
                with view[start:start + length] as piece:
                    yield piece
                start += length
            if eof:
                return
            carry_in = this
            this = (this + 1) % len(ring)
    finally:
        # a read into a buffer the caller will reuse must be over before this returns
        for fut in inflight:
            with contextlib.suppress(Exception):
                fut.result()
        set_direct(fd, False)
