"""Back up directories into a repository: scan, chunk in parallel, trees, flush, snapshot.

1. A fast scan (``os.scandir`` + lstat) builds the file list and totals, applying
   excludes and ``one_file_system``, so progress has bytes and an ETA from the start.
2. Files are read by a pool of threads; files small enough to be one read are chunked
   inline, larger ones are read with direct I/O into two buffers each thread keeps,
   the next read running in a third pool while the last one is chunked
   (``chunking.cut_fd``), and their chunks handed to a second pool (hash, compress,
   encrypt into the pack's buffer), so one big file keeps every core and the disk
   busy. Files the files cache knows unchanged are not read. Files that cannot be read
   are reported and left out: the snapshot is marked partial and the backup completes.
3. Trees are stored bottom-up, ``repo.flush()`` makes packs and index durable, and only
   then is the snapshot object written (followed by the files cache, in one transaction).
"""

from __future__ import annotations

import fnmatch
import getpass
import os
import socket
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from .. import __version__
from ..clock import Clock, SystemClock
from .chunking import buffer_size, cut_fd
from .direct_io import ThreadBuffers
from .files_cache import CacheEntry, FilesCache
from .packs import DATA
from .repository import Repository
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


class Progress(Protocol):
    """Progress callbacks; ``on_file``/``on_bytes`` may come from worker threads."""

    def on_start(self, total_files: int, total_bytes: int) -> None: ...

    def on_file(self, path: str) -> None: ...

    def on_bytes(self, n: int) -> None: ...

    def on_error(self, path: str, msg: str) -> None: ...


class NullProgress:
    def on_start(self, total_files: int, total_bytes: int) -> None:
        pass

    def on_file(self, path: str) -> None:
        pass

    def on_bytes(self, n: int) -> None:
        pass

    def on_error(self, path: str, msg: str) -> None:
        pass


@dataclass
class BackupResult:
    snapshot_id: str
    files: int
    dirs: int
    bytes: int  # file bytes read or reused from the files cache
    added_bytes: int  # sealed bytes added to packs (data and trees)
    seconds: float
    partial: bool
    errors: list[dict[str, str]] = field(default_factory=list)
    files_read: int = 0  # files actually opened and chunked (not from the cache)
    bytes_read: int = 0


@dataclass(eq=False, slots=True)
class _Entry:
    name: str
    path: str
    st: os.stat_result
    kind: str  # file, dir, symlink, fifo
    children: dict[str, _Entry] | None = None
    target: str = ""
    content: list[bytes] | None = None
    size: int = 0
    subtree: str = ""


class _ReadError(Exception):
    pass


def normalize_paths(paths: Iterable[str | bytes | os.PathLike[str]]) -> list[str]:
    """Absolute, normalized, unique paths, dropping those inside another given path."""
    norm = sorted({os.path.normpath(os.path.abspath(os.fsdecode(p))) for p in paths},
                  key=os.fsencode)
    out: list[str] = []
    for p in norm:
        if any(p == q or q == "/" or p.startswith(q + "/") for q in out):
            continue
        out.append(p)
    return out


def is_excluded(path: str, patterns: Sequence[str]) -> bool:
    """fnmatch globs against the full path and the basename (``*`` also spans '/')."""
    base = os.path.basename(path)
    return any(fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(base, pat)
               for pat in patterns)


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return None


def _type_name(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return f"file type {stat.S_IFMT(mode):o}"


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


class Scan:
    """The tree to back up, as ``os.scandir`` + lstat saw it: entries, the regular files,
    and what could not be read. Needs no repository, so the CLI runs it while the key is
    being derived."""

    def __init__(self, paths: Iterable[str | bytes | os.PathLike[str]], *,
                 excludes: Sequence[str] = (), one_file_system: bool = False,
                 progress: Progress | None = None) -> None:
        self.tops = normalize_paths(paths)
        self.excludes = list(excludes)
        self.one_fs = one_file_system
        self.progress: Progress = progress or NullProgress()
        self.errors: list[dict[str, str]] = []
        self.files: list[_Entry] = []
        self.started_ns = time.time_ns()
        self.root = self.build_root(self.tops)

    def error(self, path: str, msg: str) -> None:
        self.errors.append({"path": path, "error": msg})
        self.progress.on_error(path, msg)

    def _entry(self, name: str, path: str, st: os.stat_result) -> _Entry | None:
        kind = _kind(st.st_mode)
        if kind is None:
            self.error(path, f"skipped: unsupported {_type_name(st.st_mode)}")
            return None
        e = _Entry(name, path, st, kind)
        if kind == "dir":
            e.children = {}
        elif kind == "file":
            e.size = st.st_size
            self.files.append(e)
        elif kind == "symlink":
            try:
                e.target = os.readlink(path)
            except OSError as exc:
                self.error(path, f"cannot read symlink: {exc.strerror or exc}")
                return None
        return e

    def scan(self, top: _Entry) -> None:
        if top.kind != "dir":
            return
        dev = top.st.st_dev
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d.path) as it:
                    listing = list(it)
            except OSError as exc:
                self.error(d.path, f"cannot list directory: {exc.strerror or exc}")
                continue
            assert d.children is not None
            for de in listing:
                path = de.path
                if self.excludes and is_excluded(path, self.excludes):
                    continue
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError as exc:
                    self.error(path, f"cannot stat: {exc.strerror or exc}")
                    continue
                child = self._entry(de.name, path, st)
                if child is None:
                    continue
                d.children[de.name] = child
                if child.kind == "dir" and not (self.one_fs and st.st_dev != dev):
                    stack.append(child)

    def build_root(self, tops: list[str]) -> _Entry:
        root = _Entry("", "/", os.stat("/"), "dir", children={})
        for top in tops:
            if top == "/":
                root = _Entry("", "/", os.lstat("/"), "dir", children={})
                self.scan(root)
                break
            if self.excludes and is_excluded(top, self.excludes):
                continue
            comps = top.strip("/").split("/")
            parent: _Entry | None = root
            for i, comp in enumerate(comps[:-1]):
                assert parent is not None and parent.children is not None
                kids = parent.children
                child = kids.get(comp)
                if child is None:
                    path = "/" + "/".join(comps[:i + 1])
                    try:
                        st = os.stat(path)
                    except OSError as exc:
                        self.error(path, f"cannot stat: {exc.strerror or exc}")
                        parent = None
                        break
                    if not stat.S_ISDIR(st.st_mode):
                        self.error(path, "not a directory")
                        parent = None
                        break
                    child = _Entry(comp, path, st, "dir", children={})
                    kids[comp] = child
                parent = child
            if parent is None:
                continue
            try:
                st = os.lstat(top)
            except OSError as exc:
                self.error(top, f"cannot stat: {exc.strerror or exc}")
                continue
            entry = self._entry(comps[-1], top, st)
            if entry is None:
                continue
            assert parent.children is not None
            parent.children[comps[-1]] = entry
            self.scan(entry)
        return root


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
        self.read_buffers = ThreadBuffers(buffer_size(self.small))
        self.spare_buffers = ThreadBuffers(buffer_size(self.small))
        self.read_pool: ThreadPoolExecutor | None = None

    def error(self, path: str, msg: str) -> None:
        self.scanned.error(path, msg)

    # -- file content ---------------------------------------------------------------

    def _chunker(self) -> Any:
        ch = getattr(self._local, "chunker", None)
        if ch is None:
            ch = self._local.chunker = self.repo.new_chunker()
        return ch

    def _store(self, data: bytes | memoryview) -> bytes:
        bid = self.repo.blob_id(data)
        _, added = self.repo.add_blob(DATA, data, bid)
        if added:
            with self._stats_lock:
                self.added += added
        self.progress.on_bytes(len(data))
        return bid

    def _store_release(self, data: bytes) -> bytes:
        try:
            return self._store(data)
        finally:
            self._sem.release()

    def read_file(self, e: _Entry) -> tuple[list[bytes], int]:
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

    def read_batch(self, batch: list[_Entry]) -> list[tuple[list[bytes], int] | _ReadError]:
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
        """Chunks of a large file, read directly into this thread's buffer; each chunk
        is copied out and hashed, compressed and encrypted by the blob pool."""
        assert self.blob_pool is not None
        futures: list[Future[bytes]] = []
        total = 0
        failure: _ReadError | None = None
        it = cut_fd(self._chunker(), f.fileno(), self.read_buffers.get(), self.small,
                    spare=self.spare_buffers.get(), reader=self.read_pool)
        try:
            while True:
                try:
                    piece = next(it)
                except StopIteration:
                    break
                except OSError as exc:
                    failure = _ReadError(f"read failed: {exc.strerror or exc}")
                    break
                data = bytes(piece)
                total += len(data)
                self._sem.acquire()
                try:
                    futures.append(self.blob_pool.submit(self._store_release, data))
                except BaseException:
                    self._sem.release()
                    raise
        finally:
            it.close()
            ids = [fut.result() for fut in futures]  # storage errors propagate
        if failure is not None:
            raise failure
        self._count(total)
        return ids, total


def _batches(files: list[_Entry], small: int) -> Iterator[list[_Entry]]:
    """Small files travel in batches (less pool overhead per file), large ones alone."""
    batch: list[_Entry] = []
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
    one_file_system then apply) and save a snapshot; see the module docstring."""
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
    b = _Backup(repo, scanned, progress=prog, workers=workers or os.cpu_count() or 1)

    # hard links, then the files cache, decide what must be read
    leaders: dict[tuple[int, int], _Entry] = {}
    followers: list[tuple[_Entry, _Entry]] = []
    candidates: list[_Entry] = []
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
    to_read: list[_Entry] = []
    if files_cache is not None:
        hits = files_cache.lookup_many([(e.path, e.st) for e in candidates], repo.index)
        for e, hit in zip(candidates, hits, strict=True):
            if hit is None:
                to_read.append(e)
            else:
                reused[id(e)] = list(hit)
    else:
        to_read = candidates

    prog.on_start(len(b.files), sum(e.size for e in b.files))
    for e in b.files:
        if id(e) in reused:
            e.content = reused[id(e)]
            prog.on_bytes(e.size)

    failed: set[int] = set()
    cache_rows: list[tuple[str, CacheEntry]] = []
    file_pool = ThreadPoolExecutor(b.workers, thread_name_prefix="backup-file")
    b.blob_pool = ThreadPoolExecutor(b.workers, thread_name_prefix="backup-blob")
    b.read_pool = ThreadPoolExecutor(b.workers, thread_name_prefix="backup-read")
    try:
        futures = [(batch, file_pool.submit(b.read_batch, batch))
                   for batch in _batches(to_read, b.small)]
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
        b.read_buffers.close()
        b.spare_buffers.close()
    for e, lead in followers:
        if id(lead) in failed:
            b.error(e.path, "skipped: its hard-linked twin could not be read")
            failed.add(id(e))
        else:
            e.content, e.size = lead.content, lead.size

    # trees, bottom-up
    order: list[_Entry] = []
    stack = [root]
    while stack:
        d = stack.pop()
        order.append(d)
        assert d.children is not None
        stack.extend(c for c in d.children.values() if c.kind == "dir")
    n_files = n_dirs = 0
    total_bytes = 0
    for d in reversed(order):
        assert d.children is not None
        nodes: list[Node] = []
        for c in d.children.values():
            if id(c) in failed:
                continue
            nodes.append(_node(c))
            if c.kind == "file":
                n_files += 1
                total_bytes += c.size
            elif c.kind == "dir":
                n_dirs += 1
        d.subtree, added = save_tree(repo, nodes)
        b.added += added
    repo.flush()
    repo.release_buffers()

    seconds = clock.monotonic() - started_mono
    partial = bool(b.errors)
    snap: dict[str, Any] = {
        "version": 1,
        "time": started,
        "hostname": hostname or socket.gethostname(),
        "username": _username(),
        "paths": tops,
        "tags": list(tags),
        "tree": root.subtree,
        "parent": parent,
        "excludes": list(excludes),
        "partial": partial,
        "errors": list(b.errors),
        "summary": {"files": n_files, "dirs": n_dirs, "bytes": total_bytes,
                    "added_bytes": b.added, "seconds": seconds},
        "program": f"swarm-maint {__version__}",
    }
    snapshot_id = repo.save_object("snapshots", snap)
    if files_cache is not None and cache_rows:
        files_cache.update(cache_rows, clock.time())
    return BackupResult(snapshot_id, n_files, n_dirs, total_bytes, b.added, seconds, partial,
                        list(b.errors), b.files_read, b.bytes_read)


def _node(e: _Entry) -> Node:
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

