"""Content-defined chunking of a file read with direct I/O into one reused buffer.

pyfastcdc's own stream chunker reads through the page cache into a fresh buffer per
file and moves its remainder after every chunk. This one reads ``READ_SIZE`` at a time
with ``O_DIRECT`` into a page-aligned buffer that a thread keeps, runs FastCDC over it,
and carries the last, possibly unfinished chunk over to the next read: it is placed so
that it ends on a page boundary, right before the next read. A cut found with at least
``max_size`` bytes ahead (or at end of file) is final, exactly as in pyfastcdc's stream
chunker, so both cut a file at the same places and repositories stay deduplicated.
"""

from __future__ import annotations

from collections.abc import Generator

from pyfastcdc import FastCDC

from .direct_io import AlignedBuffer, align_up, read_direct_into, set_direct

__all__ = ["READ_SIZE", "buffer_size", "cut_fd"]

READ_SIZE = 4 << 20  # 8 MiB reads were no faster and cost each reading thread 4 MiB more


def buffer_size(max_size: int, read_size: int = READ_SIZE) -> int:
    """Capacity ``cut_fd`` needs: room for a carried-over chunk, then one read."""
    return align_up(max_size) + read_size


def cut_fd(chunker: FastCDC, fd: int, buf: AlignedBuffer, max_size: int,
           read_size: int = READ_SIZE) -> Generator[memoryview, None, None]:
    """Yield the chunks of the file open on ``fd`` from its current position (a
    multiple of 4096). Each view is valid only until the next one is asked for.
    ``read_size`` must be a multiple of 4096; OSError from reads propagates."""
    head = align_up(max_size)
    if buf.capacity < head + read_size or read_size % 4096:
        raise ValueError("buffer too small or read size unaligned")
    view = buf.view
    start = end = head
    eof = False
    set_direct(fd, True)  # where refused, the same reads go through the page cache
    try:
        while True:
            rem = end - start
            if rem and start != head - rem:
                # < max_size, in place (memoryview assignment copies like memmove)
                view[head - rem:head] = view[start:end]
            start = head - rem
            with view[head:head + read_size] as dest:
                n = read_direct_into(fd, dest)
            end = head + n
            eof = n < read_size
            if start == end:
                return
            for chunk in chunker.cut_buf(view[start:end]):
                if not eof and end - start < max_size:
                    break  # not final: the next read may move this cut
                length = chunk.length
                with view[start:start + length] as piece:
                    yield piece
                start += length
            if eof:
                return
    finally:
        set_direct(fd, False)
