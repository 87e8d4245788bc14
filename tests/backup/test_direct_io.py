"""Direct I/O: aligned writes and reads, the streaming chunker over them, packs filled by
many threads at once, and large files restored through the aligned staging buffer."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from swarm_maint.backup.backup import run_backup
from swarm_maint.backup.chunking import (
    READ_SIZE,
    SOLO_READ_SIZE,
    SOLO_RING,
    buffer_size,
    cut_fd,
    read_size_for,
    ring_depth,
)
from swarm_maint.backup.direct_io import (
    ALIGN,
    AlignedBuffer,
    address_of,
    align_up,
    pwrite_all,
    read_direct_into,
    set_direct,
)
from swarm_maint.backup.packs import DATA
from swarm_maint.backup.repository import ChunkerParams, Repository
from swarm_maint.backup.restore import restore
from swarm_maint.backup.snapshots import list_files
from swarm_maint.backup.storage import LocalStorage
from swarm_maint.backup.verify import verify

SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN, (1 << 20) + 123]


def _direct_flag(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def test_aligned_buffer_is_page_aligned_and_grows_keeping_its_content() -> None:
    buf = AlignedBuffer(100)
    assert buf.capacity == ALIGN
    addr = address_of(buf.view)
    assert addr is not None and addr % ALIGN == 0
    data = os.urandom(10_000)
    buf.append(data[:3000])
    buf.append(data[3000:])  # past the first page: reallocated
    assert buf.capacity >= 10_000
    assert bytes(buf.data()) == data
    addr = address_of(buf.view)
    assert addr is not None and addr % ALIGN == 0
    buf.close()


def test_address_of_read_only_buffer_is_none() -> None:
    assert address_of(memoryview(b"abc")) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("offset", [0, ALIGN, 7])
def test_pwrite_all_writes_exactly_and_leaves_direct_off(tmp_path: Path, size: int,
                                                         offset: int) -> None:
    data = os.urandom(size)
    buf = AlignedBuffer(size)
    buf.append(data)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"\xee" * offset, 0)
        pwrite_all(fd, buf.data(), offset)
        assert not _direct_flag(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\xee" * offset + data
    buf.close()


def test_pwrite_all_from_unaligned_bytes_is_buffered_and_exact(tmp_path: Path) -> None:
    data = os.urandom((2 << 20) + 5)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pwrite_all(fd, memoryview(data)[1:], 0)  # read-only and off the page: no direct
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data[1:]


@pytest.mark.parametrize("size", SIZES)
def test_read_direct_into_reads_whole_files_with_unaligned_ends(tmp_path: Path,
                                                                size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    buf = AlignedBuffer(size + 2 * ALIGN)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        set_direct(fd, True)
        n = read_direct_into(fd, buf.view[:buf.capacity], 0)
        assert n == size
        assert read_direct_into(fd, buf.view[:ALIGN], align_up(size)) == 0  # at the end
        if size > ALIGN:  # from an offset, whatever the descriptor's position
            os.lseek(fd, 0, os.SEEK_SET)
            set_direct(fd, True)
            assert read_direct_into(fd, buf.view[:buf.capacity], ALIGN) == size - ALIGN
            assert bytes(buf.view[:size - ALIGN]) == data[ALIGN:]
            n = read_direct_into(fd, buf.view[:buf.capacity], 0)
    finally:
        os.close(fd)
    assert bytes(buf.view[:n]) == data
    buf.close()


def test_direct_io_is_really_used_on_this_filesystem(tmp_path: Path) -> None:
    """The fast path is not dead code: the test filesystem takes O_DIRECT (ext4, tmpfs
    and overlayfs on current kernels do); where it does not, the buffered fallback is
    what every other test exercises."""
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert set_direct(fd, True) is True
        assert _direct_flag(fd)
        assert set_direct(fd, False) is True
        assert not _direct_flag(fd)
    finally:
        os.close(fd)


def _reference_cuts(chunker: FastCDC, path: Path) -> list[bytes]:
    with open(path, "rb") as f:
        return [bytes(c.data) for c in chunker.cut_stream(f)]


def _direct_cuts(chunker: FastCDC, path: Path, max_size: int, read_size: int,
                 ring: int = 1) -> list[bytes]:
    bufs = [AlignedBuffer(buffer_size(max_size, read_size)) for _ in range(ring)]
    fd = os.open(path, os.O_RDONLY)
    pool = ThreadPoolExecutor(ring)
    try:
        return [bytes(v) for v in cut_fd(chunker, fd, bufs, max_size, read_size,
                                         reader=pool)]
    finally:
        pool.shutdown()
        os.close(fd)
        for buf in bufs:
            buf.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 400_000), seed=st.integers(0, 2**32),
       content=st.sampled_from(["random", "repeat", "zeros"]),
       read_pages=st.sampled_from([1, 4, 16, 64]), ring=st.sampled_from([1, 2, 3, 4]))
def test_direct_chunker_cuts_exactly_like_pyfastcdc(tmp_path: Path, size: int, seed: int,
                                                    content: str, read_pages: int,
                                                    ring: int) -> None:
    """Identical cut points (so repositories written before stay deduplicated), for
    reads smaller and larger than the largest chunk, on random and repetitive data and
    on zeros (where every chunk is cut at the largest size), with one buffer, or a ring
    of buffers with the next reads running in other threads at once."""
    rng = random.Random(seed)
    if content == "repeat":
        data = (rng.randbytes(20_000) * (size // 20_000 + 1))[:size]
    elif content == "zeros":
        data = bytes(size)
    else:
        data = rng.randbytes(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    chunker = FastCDC(8192, min_size=2048, max_size=32768, seed=seed | 1)
    ref = _reference_cuts(chunker, path)
    got = _direct_cuts(chunker, path, 32768, read_pages * ALIGN, ring)
    assert got == ref
    assert b"".join(got) == data


def test_direct_chunker_with_repository_defaults(tmp_path: Path) -> None:
    data = random.Random(5).randbytes(21 << 20)
    path = tmp_path / "big"
    path.write_bytes(data)
    p = ChunkerParams()
    chunker = FastCDC(p.avg_size, min_size=p.min_size, max_size=p.max_size, seed=99)
    ref = _reference_cuts(chunker, path)
    assert _direct_cuts(chunker, path, p.max_size, 8 << 20) == ref
    for readers in (1, 2):  # the read sizes and rings backups use
        assert _direct_cuts(chunker, path, p.max_size, read_size_for(readers),
                            ring_depth(readers)) == ref


def _file_content(repo: Repository, snapshot_id: str, path: Path) -> list[str]:
    want = str(path).lstrip("/")
    return next(list(node["content"]) for p, node in list_files(repo, snapshot_id)
                if p.lstrip("/") == want)


def test_a_large_file_read_alone_gets_larger_reads_and_the_same_chunks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One large file to read: 4 MiB reads; two: 2 MiB each (their buffers share the
    memory). The file's chunks, so its deduplication, are the same either way."""
    import swarm_maint.backup.backup as backup_mod

    sizes: list[tuple[int, int]] = []  # (read size, buffers in the ring)
    real_cut = backup_mod.cut_fd

    def spy(*args: Any, **kwargs: Any) -> Any:
        sizes.append((args[4], len(args[2])))
        return real_cut(*args, **kwargs)

    monkeypatch.setattr(backup_mod, "cut_fd", spy)
    rng = random.Random(8)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    data = rng.randbytes(12 << 20)
    (one / "model.bin").write_bytes(data)
    (two / "model.bin").write_bytes(data)
    (two / "other.bin").write_bytes(rng.randbytes(10 << 20))
    (two / "small.json").write_text("{}")  # small files are not streamed
    repo = Repository.init(LocalStorage(tmp_path / "r"), "pw")
    alone = run_backup(repo, [one])
    assert sizes == [(SOLO_READ_SIZE, SOLO_RING)] and SOLO_READ_SIZE > READ_SIZE
    assert SOLO_RING > 2
    sizes.clear()
    together = run_backup(repo, [two])
    assert sizes == [(READ_SIZE, 2), (READ_SIZE, 2)]
    assert together.added_bytes < (11 << 20)  # model.bin was found stored: only other.bin
    a = _file_content(repo, alone.snapshot_id, one / "model.bin")
    b = _file_content(repo, together.snapshot_id, two / "model.bin")
    assert a == b and len(a) > 1


class _RecordingPool(ThreadPoolExecutor):
    """A thread pool that keeps the futures of what was submitted to it."""

    def __init__(self) -> None:
        super().__init__(1)
        self.started: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut = super().submit(fn, *args, **kwargs)
        self.started.append(fut)
        return fut


def test_read_ahead_error_reaches_the_reader_and_no_read_outlives_the_chunker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that fails in the read-ahead thread raises from the chunker, as a read in
    the thread itself would; a chunker closed early waits for the read it started, so
    the buffers it lent are free when it returns."""
    import swarm_maint.backup.chunking as chunking

    path = tmp_path / "f"
    path.write_bytes(random.Random(3).randbytes(1 << 20))
    max_size, read_size = 32768, 16 * ALIGN
    chunker = FastCDC(8192, min_size=2048, max_size=max_size, seed=7)
    buf, spare = (AlignedBuffer(buffer_size(max_size, read_size)) for _ in range(2))
    pool = _RecordingPool()
    calls = 0

    def failing(fd: int, dest: memoryview, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(5, "Input/output error")
        return read_direct_into(fd, dest, offset)

    def slow(fd: int, dest: memoryview, offset: int) -> int:
        time.sleep(0.05)
        return read_direct_into(fd, dest, offset)

    fd = os.open(path, os.O_RDONLY)
    try:
        monkeypatch.setattr(chunking, "read_direct_into", failing)
        with pytest.raises(OSError, match="Input/output error"):
            for _ in cut_fd(chunker, fd, [buf, spare], max_size, read_size, reader=pool):
                pass
        # the failed read, and the one queued behind it before its result was asked for
        assert calls == 4
        pool.started.clear()
        monkeypatch.setattr(chunking, "read_direct_into", slow)
        gen = cut_fd(chunker, fd, [buf, spare], max_size, read_size, reader=pool)
        next(gen)
        gen.close()
        assert len(pool.started) == 2  # the ring's first two reads
        assert all(f.done() for f in pool.started)
    finally:
        pool.shutdown()
        os.close(fd)
    buf.close()  # no view of either buffer is left: unmapping succeeds
    spare.close()


def test_a_ring_keeps_several_reads_in_flight_and_cuts_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a ring of four buffers, three reads wait on the disk at once while the
    fourth buffer is chunked (what keeps the disk busy while the reading threads queue
    for the GIL), each at its own offset, and the chunks are still pyfastcdc's."""
    import swarm_maint.backup.chunking as chunking

    data = random.Random(4).randbytes(3 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    max_size, read_size = 32768, 16 * ALIGN
    chunker = FastCDC(8192, min_size=2048, max_size=max_size, seed=11)
    lock = threading.Lock()
    busy = peak = 0
    offsets: list[int] = []

    def slow(fd: int, dest: memoryview, offset: int) -> int:
        nonlocal busy, peak
        with lock:
            busy += 1
            peak = max(peak, busy)
            offsets.append(offset)
        time.sleep(0.03)
        try:
            return read_direct_into(fd, dest, offset)
        finally:
            with lock:
                busy -= 1

    monkeypatch.setattr(chunking, "read_direct_into", slow)
    got = _direct_cuts(chunker, path, max_size, read_size, ring=4)
    assert got == _reference_cuts(chunker, path)
    assert peak == 4  # the ring's first reads; three at a time after that
    # every offset read once, in order of submission; the last ones past the end
    assert offsets == [i * read_size for i in range(len(offsets))]
    assert len(offsets) >= len(data) // read_size + 1


def test_the_first_short_read_ends_the_file_in_a_ring(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file cut short while it is read (truncated, or a read that returns less): the
    chunks end with what that read returned, even though reads queued behind it found
    data at later offsets; nothing after the gap is taken for the file's content."""
    import swarm_maint.backup.chunking as chunking

    data = random.Random(6).randbytes(1 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    max_size, read_size = 32768, 16 * ALIGN
    chunker = FastCDC(8192, min_size=2048, max_size=max_size, seed=13)

    def short_third(fd: int, dest: memoryview, offset: int) -> int:
        if offset == 2 * read_size:
            return read_direct_into(fd, dest[:1000], offset)
        return read_direct_into(fd, dest, offset)

    monkeypatch.setattr(chunking, "read_direct_into", short_third)
    got = _direct_cuts(chunker, path, max_size, read_size, ring=3)
    assert b"".join(got) == data[:2 * read_size + 1000]
    prefix = tmp_path / "prefix"
    prefix.write_bytes(data[:2 * read_size + 1000])
    assert got == _reference_cuts(chunker, prefix)


def test_packs_filled_by_many_threads_verify_and_load(tmp_path: Path) -> None:
    """Reservations in one pack buffer, encrypted into by 8 threads at once: every blob
    comes back, every pack's header matches its layout, read-data verify is clean."""
    repo = Repository.init(LocalStorage(tmp_path / "r"), "pw")
    blobs: dict[bytes, bytes] = {}
    lock = threading.Lock()

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            n = rng.choice([10, 5000, 300_000, 2_500_000])
            data = rng.randbytes(n) if rng.random() < 0.5 else bytes([seed]) * n + rng.randbytes(8)
            bid, _ = repo.add_blob(DATA, data)
            with lock:
                blobs[bid] = data

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    repo.flush()
    assert len(repo.storage.list("packs/")) > 3  # several packs were closed and written
    again = Repository.open(LocalStorage(tmp_path / "r"), "pw")
    again.load_index()
    for bid, data in blobs.items():
        assert again.load_blob(bid) == data
    report = verify(again, read_data=True)
    assert report.errors == []
    assert report.packs_read == len(repo.storage.list("packs/"))
    assert report.blobs_read == len(blobs)


def test_large_files_restore_exactly_through_the_staging_buffer(tmp_path: Path) -> None:
    """Files above the direct-write threshold with odd sizes (unaligned tails), a
    sparse-looking one and one of exactly a page multiple restore byte for byte."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(11)
    files = {
        "odd.bin": rng.randbytes((9 << 20) + 4097),
        "pages.bin": rng.randbytes(5 * (1 << 20)),
        "zeros.bin": bytes(3 << 20) + b"end",
        "small.bin": rng.randbytes(1000),
    }
    for name, data in files.items():
        (src / name).write_bytes(data)
        os.utime(src / name, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    repo = Repository.init(LocalStorage(tmp_path / "r"), "pw",
                           chunker=ChunkerParams(256 << 10, 512 << 10, 1 << 20))
    res = run_backup(repo, [src])
    out = tmp_path / "out"
    result = restore(repo, res.snapshot_id, out)
    assert result.errors == []
    back = out / str(src).lstrip("/")
    for name, data in files.items():
        got = (back / name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), name
        assert (back / name).stat().st_mtime_ns == 1_600_000_000_000_000_000
    assert sorted(p.name for p in back.iterdir()) == sorted(files)  # no temp files left


def test_a_disk_error_midway_through_a_large_file_skips_that_file_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO on the third read of a file that is streamed with read-ahead (a bad sector):
    that file is reported and left out, the snapshot is partial, every other file is
    backed up and restores exactly, and the buffers the readers used are all unmapped
    (the error does not keep one of them mapped and crash the backup)."""
    import swarm_maint.backup.chunking as chunking

    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(21)
    bad, good = rng.randbytes(10 << 20), rng.randbytes(10 << 20)  # 3 reads each
    (src / "bad.bin").write_bytes(bad)
    (src / "good.bin").write_bytes(good)
    (src / "note.txt").write_text("small file\n")
    real = chunking.read_direct_into
    bad_ino = (src / "bad.bin").stat().st_ino
    reads = 0

    def flaky(fd: int, dest: memoryview, offset: int) -> int:
        nonlocal reads
        if os.fstat(fd).st_ino == bad_ino:
            reads += 1
            if reads == 3:
                raise OSError(5, "Input/output error")
        return real(fd, dest, offset)

    monkeypatch.setattr(chunking, "read_direct_into", flaky)
    repo = Repository.init(LocalStorage(tmp_path / "r"), "pw",
                           chunker=ChunkerParams(64 << 10, 128 << 10, 256 << 10))
    res = run_backup(repo, [src])
    assert reads == 4  # the failed one, and the one queued behind it
    assert res.partial
    assert [e["path"] for e in res.errors] == [str(src / "bad.bin")]
    assert "Input/output error" in res.errors[0]["error"]
    out = tmp_path / "out"
    restore(repo, res.snapshot_id, out)
    restored = out / str(src).lstrip("/")
    assert sorted(p.name for p in restored.iterdir()) == ["good.bin", "note.txt"]
    assert (restored / "good.bin").read_bytes() == good
    assert verify(repo, read_data=True).errors == []


@pytest.mark.parametrize("refusal", ["flag", "transfer"])
def test_backup_and_restore_where_the_filesystem_refuses_direct_io(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str) -> None:
    """Some filesystems (FUSE, older ZFS, some network filesystems) refuse O_DIRECT: at
    fcntl ("flag") or only when a transfer is made ("transfer", EINVAL from read or
    write). Backup (with read-ahead) and restore then go through the page cache and
    lose nothing."""
    import swarm_maint.backup.direct_io as dio

    def direct(fd: int) -> bool:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)

    refused = {"flag": 0, "transfer": 0}
    if refusal == "flag":
        real_fcntl = fcntl.fcntl

        def fake_fcntl(fd: int, cmd: int, arg: int = 0) -> int:
            if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
                refused["flag"] += 1
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_fcntl(fd, cmd, arg)

        monkeypatch.setattr(dio.fcntl, "fcntl", fake_fcntl)
    else:
        real_preadv, real_pwrite = os.preadv, os.pwrite

        def fake_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
            if direct(fd):
                refused["transfer"] += 1
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_preadv(fd, buffers, offset)

        def fake_pwrite(fd: int, data: memoryview, offset: int) -> int:
            if direct(fd):
                refused["transfer"] += 1
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(dio.os, "preadv", fake_preadv)
        monkeypatch.setattr(dio.os, "pwrite", fake_pwrite)

    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(8)
    files = {"big.bin": rng.randbytes((9 << 20) + 4097), "mid.bin": rng.randbytes(3 << 20),
             "small.txt": b"hello\n" * 100}
    for name, data in files.items():
        (src / name).write_bytes(data)
    repo = Repository.init(LocalStorage(tmp_path / "r"), "pw",
                           chunker=ChunkerParams(256 << 10, 512 << 10, 1 << 20))
    res = run_backup(repo, [src])
    assert not res.partial
    out = tmp_path / "out"
    rr = restore(repo, res.snapshot_id, out)
    assert rr.errors == []
    assert refused[refusal] > 0  # the refusal was met, not bypassed
    restored = out / str(src).lstrip("/")
    for name, data in files.items():
        assert (restored / name).read_bytes() == data
    assert verify(repo, read_data=True).errors == []
