"""Restore a snapshot (or part of it) into a target directory.

Safety first: whatever names a repository holds, nothing is written outside ``target``.
Names that are not one plain path component ("", ".", "..", containing "/" or NUL) are
refused; every directory is entered with ``O_NOFOLLOW | O_DIRECTORY`` relative to its
parent's descriptor, so neither a symlink the restore created nor one already in the
target is ever followed; files are created with ``O_EXCL | O_NOFOLLOW`` under a temporary
name and renamed into place (which replaces a symlink instead of writing through it).

Large files are written in order, with direct I/O, as their chunks are decoded in
parallel a few ahead. Every chunk is verified by ``load_blob`` before it is written; a
damaged chunk fails its file (reported with the pack's name) and the temporary file is
removed, so wrong content never lands silently. Directory modes and mtimes are set
last, children before parents.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import secrets
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .backup import NullProgress, Progress
from .direct_io import ALIGN, ThreadBuffers, pwrite_all
from .errors import DamagedObjectError
from .repository import Repository
from .snapshots import find_snapshot
from .tree import Node, is_safe_name, load_tree

__all__ = ["RestoreResult", "restore"]

# files of at least this size are written in order through an aligned buffer, with
# direct I/O (see direct_io): restored data does not need a trip through the page cache
_DIRECT_MIN = 1 << 20
_STAGE = 4 << 20
_GROUP_FILES = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class RestoreResult:
    files: int  # files, symlinks, fifos and hard links created
    dirs: int
    bytes: int
    errors: list[dict[str, str]] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _Item:
    comps: tuple[str, ...]
    node: Node

    @property
    def path(self) -> str:
        return "/" + "/".join(self.comps)


def _matches(path: str, patterns: Sequence[str]) -> bool:
    rel = path.lstrip("/")
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(rel, p) for p in patterns)


def _open_dir(root_fd: int, comps: Sequence[str]) -> int:
    """A new descriptor of target/comps, never following a symlink on the way."""
    cur = os.dup(root_fd)
    for c in comps:
        try:
            nfd = os.open(c, _DIR_FLAGS, dir_fd=cur)
        finally:
            os.close(cur)
        cur = nfd
    return cur


def _tmp_name() -> str:
    return f".smr-{secrets.token_hex(8)}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return f"{exc.strerror} (a path component is not a real directory; not followed)"
        return exc.strerror or str(exc)
    return str(exc)


class _Restore:
    def __init__(self, repo: Repository, root_fd: int, progress: Progress,
                 workers: int) -> None:
        self.repo = repo
        self.root_fd = root_fd
        self.progress = progress
        self.workers = workers
        self.errors: list[dict[str, str]] = []
        self.as_root = os.geteuid() == 0
        self.chunk_pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.staging = ThreadBuffers(_STAGE + repo.chunker_params.max_size)
        self.bytes = 0

    def error(self, path: str, msg: str) -> None:
        self.errors.append({"path": path, "error": msg})
        self.progress.on_error(path, msg)

    # -- plan -------------------------------------------------------------------------

    def plan(self, tree_id: str, includes: Sequence[str]) -> tuple[list[_Item], list[_Item]]:
        """(directories in pre-order, other nodes), filtered by ``includes``."""
        dirs: list[_Item] = []
        others: list[_Item] = []
        needed: set[tuple[str, ...]] = set()
        stack: list[tuple[str, tuple[str, ...], bool]] = [(tree_id, (), not includes)]
        while stack:
            tid, comps, inside = stack.pop()
            where = "/" + "/".join(comps)
            try:
                nodes = load_tree(self.repo, tid)
            except DamagedObjectError as exc:
                self.error(where, f"cannot read directory: {exc}")
                continue
            for node in reversed(nodes):
                name = node["name"]
                if not is_safe_name(name):
                    self.error(f"{where.rstrip('/')}/{name!r}",
                               f"refused unsafe name {name!r} (would escape the target)")
                    continue
                item = _Item((*comps, name), node)
                included = inside or _matches(item.path, includes)
                if node["type"] == "dir":
                    dirs.append(item)
                    if included:
                        needed.add(item.comps)
                    stack.append((node["subtree"], item.comps, included))
                elif included:
                    others.append(item)
                    for i in range(1, len(comps) + 1):
                        needed.add(comps[:i])
        for d in dirs:  # parents of included directories
            if d.comps in needed:
                for i in range(1, len(d.comps)):
                    needed.add(d.comps[:i])
        dirs = sorted((d for d in dirs if d.comps in needed), key=lambda d: d.comps)
        return dirs, others

    # -- directories ------------------------------------------------------------------

    def make_dirs(self, dirs: list[_Item]) -> tuple[list[_Item], set[tuple[str, ...]]]:
        """Create directories in pre-order; (created, failed prefixes)."""
        made: list[_Item] = []
        failed: set[tuple[str, ...]] = set()
        for d in dirs:
            if any(d.comps[:i] in failed for i in range(1, len(d.comps))):
                failed.add(d.comps)
                continue
            try:
                pfd = _open_dir(self.root_fd, d.comps[:-1])
                try:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(d.comps[-1], 0o700, dir_fd=pfd)
                    os.close(os.open(d.comps[-1], _DIR_FLAGS, dir_fd=pfd))
                finally:
                    os.close(pfd)
            except OSError as exc:
                self.error(d.path, f"cannot create directory: {_describe(exc)}")
                failed.add(d.comps)
                continue
            made.append(d)
        return made, failed

    def finish_dir(self, d: _Item) -> None:
        node = d.node
        fd = _open_dir(self.root_fd, d.comps)
        try:
            if self.as_root:
                os.fchown(fd, node["uid"], node["gid"])
            os.fchmod(fd, node["mode"])
            os.utime(fd, ns=(node["mtime_ns"], node["mtime_ns"]))
        finally:
            os.close(fd)

    # -- files ------------------------------------------------------------------------

    def _write_chunk(self, fd: int, blob_id: bytes, offset: int) -> int:
        data = memoryview(self.repo.load_blob(blob_id))
        n = len(data)
        while data:
            w = os.pwrite(fd, data, offset)
            data = data[w:]
            offset += w
        self.progress.on_bytes(n)
        return n

    def _write_content(self, fd: int, item: _Item) -> int:
        ids = [bytes.fromhex(c) for c in item.node["content"]]
        if len(ids) <= 1 or self.chunk_pool is None or item.node["size"] < _DIRECT_MIN:
            total = 0
            for bid in ids:
                total += self._write_chunk(fd, bid, total)
            return total
        return self._write_staged(fd, ids)

    def _write_staged(self, fd: int, ids: list[bytes]) -> int:
        """Chunks decoded by the pool a few ahead, taken in order into this thread's
        aligned buffer and written with direct I/O every ``_STAGE`` bytes."""
        assert self.chunk_pool is not None
        pool = self.chunk_pool
        buf = self.staging.get()
        buf.n = 0
        pos = 0  # file offset of the buffer's first byte
        todo = iter(ids)
        ahead: deque[Future[bytes]] = deque()

        def submit_next() -> None:
            bid = next(todo, None)
            if bid is not None:
                ahead.append(pool.submit(self.repo.load_blob, bid))

        for _ in range(3 * self.workers):
            submit_next()
        try:
            while ahead:
                data = ahead.popleft().result()
                submit_next()
                buf.append(data)
                self.progress.on_bytes(len(data))
                del data
                if buf.n >= _STAGE:
                    whole = buf.n & ~(ALIGN - 1)
                    with buf.view[:whole] as out:
                        pwrite_all(fd, out, pos)
                    buf.view[:buf.n - whole] = buf.view[whole:buf.n]  # < ALIGN bytes
                    pos += whole
                    buf.n -= whole
            with buf.view[:buf.n] as out:
                pwrite_all(fd, out, pos)  # the aligned part directly, the tail buffered
            return pos + buf.n
        finally:
            for f in ahead:
                f.cancel()
            for f in ahead:
                if not f.cancelled():
                    f.exception()  # wait: nothing may outlive the file

    def _finish_meta(self, fd: int, node: Node) -> None:
        if self.as_root:
            os.fchown(fd, node["uid"], node["gid"])  # before chmod: chown clears setuid
        os.fchmod(fd, node["mode"])
        os.utime(fd, ns=(node["mtime_ns"], node["mtime_ns"]))

    def restore_file(self, item: _Item, pfd: int | None = None) -> int:
        """Restore one file; ``pfd``: its directory, already open (else opened here)."""
        if pfd is None:
            pfd = _open_dir(self.root_fd, item.comps[:-1])
            try:
                return self.restore_file(item, pfd)
            finally:
                os.close(pfd)
        self.progress.on_file(item.path)
        node = item.node
        tmp = _tmp_name()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            try:
                written = self._write_content(fd, item)
                if written != node["size"]:
                    raise DamagedObjectError(
                        f"content is {written} bytes, the snapshot says {node['size']}")
                self._finish_meta(fd, node)
            finally:
                os.close(fd)
            os.rename(tmp, item.comps[-1], src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=pfd)
            raise
        with self._lock:
            self.bytes += written
        return written

    def restore_group(self, group: list[_Item]) -> list[int | OSError | DamagedObjectError]:
        """Restore files of one directory one after the other, walking to the directory
        once; (bytes written or the error) for each."""
        try:
            pfd = _open_dir(self.root_fd, group[0].comps[:-1])
        except OSError as exc:
            return [exc] * len(group)
        out: list[int | OSError | DamagedObjectError] = []
        try:
            for item in group:
                try:
                    out.append(self.restore_file(item, pfd))
                except (OSError, DamagedObjectError) as exc:
                    out.append(exc)
        finally:
            os.close(pfd)
        return out

    def restore_special(self, item: _Item) -> None:
        """A symlink or a FIFO, created under a temporary name and renamed into place."""
        node = item.node
        self.progress.on_file(item.path)
        pfd = _open_dir(self.root_fd, item.comps[:-1])
        try:
            tmp = _tmp_name()
            if node["type"] == "symlink":
                os.symlink(node["target"], tmp, dir_fd=pfd)
            else:
                os.mkfifo(tmp, 0o600, dir_fd=pfd)
            try:
                if self.as_root:
                    os.chown(tmp, node["uid"], node["gid"], dir_fd=pfd, follow_symlinks=False)
                if node["type"] != "symlink":
                    fd = os.open(tmp, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, dir_fd=pfd)
                    try:
                        os.fchmod(fd, node["mode"])
                    finally:
                        os.close(fd)
                os.utime(tmp, ns=(node["mtime_ns"], node["mtime_ns"]), dir_fd=pfd,
                         follow_symlinks=False)
                os.rename(tmp, item.comps[-1], src_dir_fd=pfd, dst_dir_fd=pfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=pfd)
                raise
        finally:
            os.close(pfd)

    def link(self, item: _Item, leader: _Item) -> None:
        self.progress.on_file(item.path)
        lfd = _open_dir(self.root_fd, leader.comps[:-1])
        try:
            pfd = _open_dir(self.root_fd, item.comps[:-1])
            try:
                tmp = _tmp_name()
                os.link(leader.comps[-1], tmp, src_dir_fd=lfd, dst_dir_fd=pfd,
                        follow_symlinks=False)
                try:
                    os.rename(tmp, item.comps[-1], src_dir_fd=pfd, dst_dir_fd=pfd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=pfd)
                    raise
            finally:
                os.close(pfd)
        finally:
            os.close(lfd)


def _groups(files: list[_Item]) -> list[list[_Item]]:
    """Small files in runs of one directory (one thread creates them: threads creating
    files in the same directory contend on its lock), large files alone."""
    groups: list[list[_Item]] = []
    run: list[_Item] = []
    for f in files:
        if f.node["size"] >= _DIRECT_MIN:
            groups.append([f])
            continue
        if run and (run[0].comps[:-1] != f.comps[:-1] or len(run) >= _GROUP_FILES):
            groups.append(run)
            run = []
        run.append(f)
    if run:
        groups.append(run)
    return groups


def restore(
    repo: Repository,
    snapshot_id: str,
    target: str | os.PathLike[str],
    *,
    includes: Sequence[str] = (),
    progress: Progress | None = None,
    workers: int | None = None,
) -> RestoreResult:
    """Restore snapshot ``snapshot_id`` (an id, a unique prefix or "latest") under
    ``target`` (created if missing): backing up /data/x and restoring to /r gives /r/data/x.
    ``includes`` restricts the restore to snapshot paths matching these fnmatch globs
    (and everything below a matching directory). Problems with single entries are
    reported in ``errors``; the rest is restored."""
    _sid, snap = find_snapshot(repo, snapshot_id)
    prog: Progress = progress or NullProgress()
    nworkers = max(1, workers or os.cpu_count() or 1)
    os.makedirs(target, exist_ok=True)
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        r = _Restore(repo, root_fd, prog, nworkers)
        dirs, others = r.plan(snap["tree"], includes)
        made, failed_dirs = r.make_dirs(dirs)

        def reachable(item: _Item) -> bool:
            return not any(item.comps[:i] in failed_dirs for i in range(1, len(item.comps)))

        others = [o for o in others if reachable(o)]
        files = [o for o in others if o.node["type"] == "file"]
        specials = [o for o in others if o.node["type"] != "file"]
        leaders: dict[tuple[int, int], _Item] = {}
        primary: list[_Item] = []
        followers: list[tuple[_Item, _Item]] = []
        for f in files:
            n = f.node
            if n["nlink"] > 1:
                key = (n["dev"], n["inode"])
                lead = leaders.get(key)
                if lead is not None and lead.node["content"] == n["content"] \
                        and lead.node["size"] == n["size"]:
                    followers.append((f, lead))
                    continue
                leaders.setdefault(key, f)
            primary.append(f)
        prog.on_start(len(others), sum(f.node["size"] for f in primary))

        count = 0
        done: set[int] = set()
        file_pool = ThreadPoolExecutor(nworkers, thread_name_prefix="restore-file")
        # chunk reads wait on the disk (direct I/O has no readahead): more of them than cores
        r.chunk_pool = ThreadPoolExecutor(2 * nworkers, thread_name_prefix="restore-chunk")
        try:
            futures = [(group, file_pool.submit(r.restore_group, group))
                       for group in _groups(primary)]
            for group, fut in futures:
                for f, outcome in zip(group, fut.result(), strict=True):
                    if isinstance(outcome, BaseException):
                        r.error(f.path, f"cannot restore file: {_describe(outcome)}")
                        continue
                    done.add(id(f))
                    count += 1
            # hard links to a file restored above; if that failed, restore a full copy
            for f, lead in followers:
                try:
                    if id(lead) in done:
                        r.link(f, lead)
                    else:
                        r.restore_file(f)
                except (OSError, DamagedObjectError) as exc:
                    r.error(f.path, f"cannot restore file: {_describe(exc)}")
                    continue
                count += 1
        finally:
            file_pool.shutdown(wait=True, cancel_futures=True)
            r.chunk_pool.shutdown(wait=True, cancel_futures=True)
            r.staging.close()
        for s in specials:
            try:
                r.restore_special(s)
            except OSError as exc:
                r.error(s.path, f"cannot restore {s.node['type']}: {_describe(exc)}")
                continue
            count += 1
        for d in reversed(made):  # children before parents
            try:
                r.finish_dir(d)
            except OSError as exc:
                r.error(d.path, f"cannot set directory metadata: {_describe(exc)}")
        return RestoreResult(count, len(made), r.bytes, r.errors)
    finally:
        os.close(root_fd)

