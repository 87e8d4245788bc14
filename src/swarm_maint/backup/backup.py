"""Back up directories into a repository: scan, chunk in parallel, trees, flush, snapshot.

1. A fast scan (``os.scandir`` + lstat, module ``scan``) builds the file list and totals,
   applying excludes and ``one_file_system``, so progress has bytes and an ETA from the
   start.
2. Files are read by a pool of threads; files small enough to be one read are chunked
   inline, larger ones are read with direct I/O into a ring of buffers each thread
   keeps, the next reads running in a third pool while one is chunked
   (``chunking.cut_fd``), and their chunks handed to a second pool (hash, compress,
   encrypt into the pack's buffer), so one big file keeps every core and the disk
   busy. Files the files cache knows unchanged are not read. Files that cannot be read
   are reported and left out: the snapshot is marked partial and the backup completes.
   Sockets below the paths hold no data and are skipped (counted, not errors).
3. Trees are stored bottom-up: those of directories with nothing left to read at any
   depth (a re-run's unchanged ones) while the files are read, the others after.
   ``repo.flush()`` then makes packs and index durable, and only then is the snapshot
   object written (followed by the files cache, in one transaction).
   Its ``parent`` is the latest snapshot of the same paths from the same host, looked for
   while the files are read.
"""

from __future__ import annotations

import getpass
import os
import stat
import threading
from collections.abc import Container, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, NamedTuple

from .. import __version__
from ..clock import Clock, SystemClock
from ..hostname import local_hostname
from .chunking import buffer_size, cut_fd, read_size_for, ring_depth
from .direct_io import ThreadBuffers
from .errors import RepositoryError
from .files_cache import CacheEntry, FilesCache
from .packs import DATA
from .repository import Repository
from .scan import Entry, NullProgress, Progress, Scan, is_excluded, normalize_paths
from .snapshots import find_parent
from .tags import check_tags
from .tree import Node, save_tree

__all__ = [
    "BackupResult",
    "NullProgress",
    "Progress",
    "Scan",
    "is_excluded",
    "normalize_paths",
    "run_backup",
]

# files the cache may vouch for must be older than this when scanned: a write in the
# same timestamp tick as our read would otherwise go unnoticed next time
_RACY_NS = 1_000_000_000
_BATCH_FILES = 32
_BATCH_BYTES = 4 << 20


class BackupResult(NamedTuple):
    snapshot_id: str
    files: int
    dirs: int
    bytes: int  # file bytes read or reused from the files cache
    added_bytes: int  # sealed bytes added to packs (data and trees)
    seconds: float
    partial: bool
    errors: list[dict[str, str]]
    files_read: int = 0  # files actually opened and chunked (not from the cache)
    bytes_read: int = 0
    sockets_skipped: int = 0  # below the paths: no data, not errors


class _ReadError(Exception):
    pass


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _open_nofollow(path: str) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        try:
            return os.open(path, flags | noatime)
        except PermissionError:
            pass  # O_NOATIME needs ownership; retry without
    return os.open(path, flags)


def _read_upto(f: BinaryIO, limit: int, expect: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes; (data, reached EOF before the limit).

    Asks for the ``expect``ed size plus one byte, then one byte more to see the end: a read
    allocates all it asks for, and asking for ``limit`` (8 MiB) would mmap and unmap that
    much for every small file (that was half the system time of a small-file backup)."""
    parts: list[bytes] = []
    n = 0
    want = min(limit, expect + 1)
    while n < limit:
        part = f.read(min(want, limit - n))
        if not part:
            return (parts[0] if len(parts) == 1 else b"".join(parts)), True
        parts.append(part)
        n += len(part)
        # all the scan saw is read: one byte more tells the end; a file that grew since
        # is read on in 1 MiB steps
        want = 1 if n <= expect else 1 << 20
    return b"".join(parts), False


class _Backup:
    def __init__(self, repo: Repository, scanned: Scan, *, progress: Progress,
                 workers: int) -> None:
        self.repo = repo
        self.scanned = scanned
        self.progress = progress
        self.workers = max(1, workers)
        self.errors = scanned.errors
        self.files = scanned.files
        self._stats_lock = threading.Lock()
        self.added = 0
        self.bytes_read = 0
        self.files_read = 0
        self._local = threading.local()
        self._sem = threading.BoundedSemaphore(2 * self.workers)
        self.small = repo.chunker_params.max_size
        self.blob_pool: ThreadPoolExecutor | None = None
        self.plan_reads(self.workers)
        self.read_pool: ThreadPoolExecutor | None = None

    def plan_reads(self, readers: int) -> None:
        """Size the reads (and the reading buffers, which are mapped on first use) for
        ``readers`` large files read at once."""
        self.read_size = read_size_for(readers)
        # one large file read alone (a fine-tuned checkpoint beside unchanged ones): more
        # reads in flight (chunking.ring_depth), and each chunk hashed where it lies, so
        # that one already stored is never copied out nor handed to another thread
        # (warm, in-process: 0.43-0.55 against 0.54-0.65 CPU s). With several, the file
        # threads share the work as before: hashing there held more chunks in memory
        # (peak RSS +5-10 MiB on the benchmark's initial backup).
        self.solo = readers <= 1
        self.depth = ring_depth(readers)
        self.ring = [ThreadBuffers(buffer_size(self.small, self.read_size))
                     for _ in range(self.depth)]

    def close_buffers(self) -> None:
        for bufs in self.ring:
            bufs.close()

    def error(self, path: str, msg: str) -> None:
        self.scanned.error(path, msg)

    # -- file content ---------------------------------------------------------------

    def _chunker(self) -> Any:
        ch = getattr(self._local, "chunker", None)
        if ch is None:
            ch = self._local.chunker = self.repo.new_chunker()
        return ch

    def _store(self, data: bytes | memoryview, bid: bytes | None = None) -> bytes:
        if bid is None:
            bid = self.repo.blob_id(data)
        _, added = self.repo.add_blob(DATA, data, bid)
        if added:
            with self._stats_lock:
                self.added += added
        self.progress.on_bytes(len(data))
        return bid

    def _store_release(self, data: bytes, bid: bytes | None) -> bytes:
        try:
            return self._store(data, bid)
        finally:
            self._sem.release()

    def read_file(self, e: Entry) -> tuple[list[bytes], int]:
        """(content ids, bytes read); _ReadError when the file cannot be read."""
        self.progress.on_file(e.path)
        try:
            fd = _open_nofollow(e.path)
        except OSError as exc:
            raise _ReadError(f"cannot open: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb", buffering=0) as f:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise _ReadError("no longer a regular file")
                if e.st.st_size <= self.small:
                    data, complete = _read_upto(f, self.small + 1, e.st.st_size)
                    if complete:
                        ids = [self._store(c.data) for c in self._chunker().cut_buf(data)]
                        self._count(len(data))
                        return ids, len(data)
                    f.seek(0)
            except OSError as exc:
                raise _ReadError(f"read failed: {exc.strerror or exc}") from None
            return self._stream(f)

    def read_batch(self, batch: list[Entry]) -> list[tuple[list[bytes], int] | _ReadError]:
        out: list[tuple[list[bytes], int] | _ReadError] = []
        for e in batch:
            try:
                out.append(self.read_file(e))
            except _ReadError as exc:
                out.append(exc)
        return out

    def _count(self, n: int) -> None:
        with self._stats_lock:
            self.files_read += 1
            self.bytes_read += n

    def _stream(self, f: BinaryIO) -> tuple[list[bytes], int]:
        """Chunks of a large file, read into this thread's buffer; each chunk is copied
        out and hashed, compressed and encrypted by the blob pool (a file read alone:
        hashed here first, and copied out only when it is new)."""
        assert self.blob_pool is not None
        futures: list[Future[bytes] | bytes] = []  # bytes: an id already stored
        total = 0
        failure: _ReadError | None = None
        it = cut_fd(self._chunker(), f.fileno(), [bufs.get() for bufs in self.ring],
                    self.small, self.read_size, reader=self.read_pool)
        try:
            while True:
                try:
                    piece = next(it)
                except StopIteration:
                    break
                except OSError as exc:
                    failure = _ReadError(f"read failed: {exc.strerror or exc}")
                    break
                total += len(piece)
                bid = None
                if self.solo:
                    bid = self.repo.blob_id(piece)
                    if self.repo.has_blob(bid):
                        self.progress.on_bytes(len(piece))
                        futures.append(bid)
                        continue
                data = bytes(piece)
                self._sem.acquire()
                try:
                    futures.append(self.blob_pool.submit(self._store_release, data, bid))
                except BaseException:
                    self._sem.release()
                    raise
        finally:
            it.close()
            # storage errors propagate
            ids = [f if isinstance(f, bytes) else f.result() for f in futures]
        if failure is not None:
            raise failure
        self._count(total)
        return ids, total


class _Trees:
    """The directories' tree blobs, saved bottom-up (a directory after its
    subdirectories), and the count of what they hold."""

    def __init__(self, repo: Repository, root: Entry) -> None:
        self.repo = repo
        order: list[Entry] = []
        stack = [root]
        while stack:
            d = stack.pop()
            order.append(d)
            assert d.children is not None
            stack.extend(c for c in d.children.values() if c.kind == "dir")
        self.bottom_up = order[::-1]
        self.saved: set[int] = set()
        self.files = self.dirs = self.bytes = self.added = 0

    def save_ready(self, waiting: set[int]) -> None:
        """Save the tree of every directory with nothing in ``waiting`` (ids of entries
        whose content is not known yet) at any depth below it."""
        blocked: set[int] = set()
        for d in self.bottom_up:
            assert d.children is not None
            if any(id(c) in waiting or id(c) in blocked for c in d.children.values()):
                blocked.add(id(d))
            else:
                self._save(d, ())

    def save_rest(self, failed: Container[int]) -> None:
        """Save the trees not saved yet, leaving out the entries in ``failed``."""
        for d in self.bottom_up:
            if id(d) not in self.saved:
                self._save(d, failed)

    def _save(self, d: Entry, failed: Container[int]) -> None:
        assert d.children is not None
        nodes: list[Node] = []
        for c in d.children.values():
            if id(c) in failed:
                continue
            nodes.append(_node(c))
            if c.kind == "file":
                self.files += 1
                self.bytes += c.size
            elif c.kind == "dir":
                self.dirs += 1
        d.subtree, added = save_tree(self.repo, nodes)
        self.added += added
        self.saved.add(id(d))


def _batches(files: list[Entry], small: int) -> Iterator[list[Entry]]:
    """Small files travel in batches (less pool overhead per file), large ones alone."""
    batch: list[Entry] = []
    size = 0
    for e in files:
        if e.size > small:
            yield [e]
            continue
        batch.append(e)
        size += e.size
        if len(batch) >= _BATCH_FILES or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def run_backup(
    repo: Repository,
    paths: Iterable[str | bytes | os.PathLike[str]] | Scan,
    *,
    tags: Sequence[str] = (),
    excludes: Sequence[str] = (),
    one_file_system: bool = False,
    files_cache: FilesCache | None = None,
    parent: str | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    clock: Clock | None = None,
    hostname: str | None = None,
) -> BackupResult:
    """Back up ``paths`` (or a Scan of them taken beforehand, whose excludes and
    one_file_system then apply) and save a snapshot; see the module docstring.
    ``parent`` is recorded as given; None looks for it (``snapshots.find_parent``)."""
    tags = check_tags(tags)
    clock = clock or SystemClock()
    started = clock.time()
    started_mono = clock.monotonic()
    prog: Progress = progress or NullProgress()
    if isinstance(paths, Scan):
        scanned = paths
    else:
        scanned = Scan(paths, excludes=excludes, one_file_system=one_file_system,
                       progress=prog)
    tops, root, scan_start_ns = scanned.tops, scanned.root, scanned.started_ns
    excludes = scanned.excludes
    hostname = hostname or local_hostname()
    # the parent is looked for while the files are read: it means reading every snapshot
    parent_found: Future[str | None] | None = None
    if parent is None:
        parent_pool = ThreadPoolExecutor(1, thread_name_prefix="backup-parent")
        parent_found = parent_pool.submit(_parent_or_none, repo, hostname, tops)
        parent_pool.shutdown(wait=False)
    b = _Backup(repo, scanned, progress=prog, workers=workers or os.cpu_count() or 1)

    # hard links, then the files cache, decide what must be read
    leaders: dict[tuple[int, int], Entry] = {}
    followers: list[tuple[Entry, Entry]] = []
    candidates: list[Entry] = []
    for e in b.files:
        if e.st.st_nlink > 1:
            key = (e.st.st_dev, e.st.st_ino)
            lead = leaders.get(key)
            if lead is not None:
                followers.append((e, lead))
                continue
            leaders[key] = e
        candidates.append(e)
    reused: dict[int, list[bytes]] = {}
    to_read: list[Entry] = []
    if files_cache is not None:
        hits = files_cache.lookup_many([(e.path, e.st) for e in candidates], repo.index)
        for e, hit in zip(candidates, hits, strict=True):
            if hit is None:
                to_read.append(e)
            else:
                reused[id(e)] = list(hit)
    else:
        to_read = candidates

    b.plan_reads(min(b.workers, sum(1 for e in to_read if e.size > b.small)))
    prog.on_start(len(b.files), sum(e.size for e in b.files))
    for e in b.files:
        if id(e) in reused:
            e.content = reused[id(e)]
            prog.on_bytes(e.size)

    failed: set[int] = set()
    cache_rows: list[tuple[str, CacheEntry]] = []
    trees = _Trees(repo, root)
    file_pool = ThreadPoolExecutor(b.workers, thread_name_prefix="backup-file")
    b.blob_pool = ThreadPoolExecutor(b.workers, thread_name_prefix="backup-blob")
    # enough threads for every read the file threads queue to be in flight at once
    b.read_pool = ThreadPoolExecutor(b.workers * b.depth, thread_name_prefix="backup-read")
    try:
        futures = [(batch, file_pool.submit(b.read_batch, batch))
                   for batch in _batches(to_read, b.small)]
        # while they are read, the trees that wait for none of them (a re-run's
        # unchanged directories: ~20 ms for 3000 files)
        trees.save_ready({id(e) for e in to_read} | {id(e) for e, _ in followers})
        results = ((e, r) for batch, fut in futures
                   for e, r in zip(batch, fut.result(), strict=True))
        for e, r in results:
            if isinstance(r, _ReadError):
                b.error(e.path, str(r))
                failed.add(id(e))
                continue
            ids, n = r
            e.content = ids
            e.size = n
            if (n == e.st.st_size and e.st.st_mtime_ns < scan_start_ns - _RACY_NS):
                cache_rows.append((e.path, CacheEntry(e.st.st_size, e.st.st_mtime_ns,
                                                      e.st.st_ctime_ns, e.st.st_ino,
                                                      tuple(ids))))
    finally:
        file_pool.shutdown(wait=True, cancel_futures=True)
        b.blob_pool.shutdown(wait=True, cancel_futures=True)
        b.read_pool.shutdown(wait=True, cancel_futures=True)
        b.close_buffers()
    for e, lead in followers:
        if id(lead) in failed:
            b.error(e.path, "skipped: its hard-linked twin could not be read")
            failed.add(id(e))
        else:
            e.content, e.size = lead.content, lead.size

    trees.save_rest(failed)
    b.added += trees.added
    repo.flush()
    repo.release_buffers()

    if parent_found is not None:
        parent = parent_found.result()
    seconds = clock.monotonic() - started_mono
    partial = bool(b.errors)
    snap: dict[str, Any] = {
        "version": 1,
        "time": started,
        "hostname": hostname,
        "username": _username(),
        "paths": tops,
        "tags": list(tags),
        "tree": root.subtree,
        "parent": parent,
        "excludes": list(excludes),
        "partial": partial,
        "errors": list(b.errors),
        "summary": {"files": trees.files, "dirs": trees.dirs, "bytes": trees.bytes,
                    "added_bytes": b.added, "seconds": seconds,
                    "sockets_skipped": len(scanned.sockets)},
        "program": f"swarm-maint {__version__}",
    }
    snapshot_id = repo.save_object("snapshots", snap)
    if files_cache is not None and cache_rows:
        files_cache.update(cache_rows, clock.time())
    return BackupResult(snapshot_id, trees.files, trees.dirs, trees.bytes, b.added, seconds,
                        partial, list(b.errors), b.files_read, b.bytes_read,
                        len(scanned.sockets))


def _parent_or_none(repo: Repository, hostname: str, paths: list[str]) -> str | None:
    """``find_parent``, or None when the snapshots cannot be listed: the parent is
    informational, and a storage fault that matters fails the backup's own writes."""
    try:
        return find_parent(repo, hostname, paths)
    except (RepositoryError, OSError):
        return None


def _node(e: Entry) -> Node:
    st = e.st
    node: Node = {
        "name": e.name, "type": e.kind, "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
        "size": e.size if e.kind == "file" else 0,
        "inode": st.st_ino, "dev": st.st_dev, "nlink": st.st_nlink,
    }
    if e.kind == "file":
        node["content"] = [c.hex() for c in (e.content or [])]
    elif e.kind == "dir":
        node["subtree"] = e.subtree
    elif e.kind == "symlink":
        node["target"] = e.target
    return node

