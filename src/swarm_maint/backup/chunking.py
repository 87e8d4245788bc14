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

Given a second buffer and a way to run a read in another thread, the next read goes on
while the current one is chunked: a file whose chunks are mostly stored already (a
fine-tuned checkpoint) is then bound by the disk alone, not by the disk plus the CPU.

A file read alone (``direct=False``) goes through the page cache instead, with the
kernel's sequential readahead. One direct read at a time keeps the disk busy only while
the reading thread gets the GIL back the moment each read ends: beside the chunking and
hashing threads it often waits, and the disk idles. Cold 4 MiB direct reads of a
256 MiB file ran at 924 MiB/s alone and 533 MiB/s beside two busy Python threads; the
kernel's readahead streams on regardless (the benchmark's fine-tuned copy: its file
phase 0.27-0.29 s instead of 0.34-0.36 s). With two files read at once, the two streams
keep the disk busy and direct reads save the CPU of the page cache (an all-new 1 GiB
backup: 2.24-2.31 s and 3.0-3.2 CPU s direct, 2.52-2.81 s and 3.9-4.0 CPU s buffered).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator
from concurrent.futures import Executor, Future

from pyfastcdc import FastCDC

from .direct_io import AlignedBuffer, align_up, read_direct_into, set_direct

__all__ = ["READ_SIZE", "SOLO_READ_SIZE", "buffer_size", "cut_fd", "read_size_for"]

READ_SIZE = 2 << 20  # each reading thread has two such windows: memory is the limit
SOLO_READ_SIZE = 4 << 20  # for a thread that reads the only large file


def read_size_for(readers: int) -> int:
    """Bytes per read when ``readers`` threads read large files at once. One alone gets
    larger reads: a chunk that runs past the end of a read is scanned again from its
    start after the next one, which costs FastCDC about a fifth more work with 2 MiB
    reads and a tenth with 4 MiB; several share the memory of the windows."""
    return SOLO_READ_SIZE if readers <= 1 else READ_SIZE


def buffer_size(max_size: int, read_size: int = READ_SIZE) -> int:
    """Capacity ``cut_fd`` needs in each buffer: room for a carried-over chunk, then one
    read."""
    return align_up(max_size) + read_size


def _read(fd: int, dest: memoryview) -> int:
    with dest:  # released even when the read fails: the buffer can then be unmapped
        return read_direct_into(fd, dest)


def cut_fd(chunker: FastCDC, fd: int, buf: AlignedBuffer, max_size: int,
           read_size: int = READ_SIZE, *, spare: AlignedBuffer | None = None,
           reader: Executor | None = None,
           direct: bool = True) -> Generator[memoryview, None, None]:
    """Yield the chunks of the file open on ``fd`` from its current position (a
    multiple of 4096). Each view is valid only until the next one is asked for.
    ``read_size`` must be a multiple of 4096; OSError from reads propagates. With
    ``spare`` and ``reader``, reads alternate between the two buffers and each one runs
    on ``reader`` while the previous one is chunked. ``direct``: ``O_DIRECT`` reads, or
    the page cache with sequential readahead (see the module docstring)."""
    head = align_up(max_size)
    bufs = [buf] if spare is None or reader is None else [buf, spare]
    ahead = reader if len(bufs) > 1 else None
    if any(b.capacity < head + read_size for b in bufs) or read_size % 4096:
        raise ValueError("buffer too small or read size unaligned")
    views = [b.view for b in bufs]
    pending: Future[int] | None = None
    this = 0  # the buffer being filled and chunked
    carry_in, start, end = 0, head, head  # where the unfinished chunk lies
    if direct:
        set_direct(fd, True)  # where refused, the same reads go through the page cache
    else:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    try:
        if ahead is not None:
            pending = ahead.submit(_read, fd, views[0][head:head + read_size])
        while True:
            view = views[this]
            rem = end - start
            if rem and (carry_in != this or start != head - rem):
                # < max_size, right before the read (memoryview assignment copies like
                # memmove); this also frees the other buffer for the next read
                view[head - rem:head] = views[carry_in][start:end]
            if pending is not None:
                fut, pending = pending, None
                n = fut.result()
            else:
                n = _read(fd, view[head:head + read_size])
            eof = n < read_size
            if ahead is not None and not eof:
                pending = ahead.submit(_read, fd, views[1 - this][head:head + read_size])
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
            if ahead is not None:
                this = 1 - this
    finally:
        if pending is not None:
            # a read into a buffer the thread will reuse must be over before it returns
            with contextlib.suppress(Exception):
                pending.result()
        set_direct(fd, False)
