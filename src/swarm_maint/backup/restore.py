"""Restore a snapshot (or part of it) into a target directory.

Safety first: whatever names a repository holds, nothing is written outside ``target``.
Names that are not one plain path component ("", ".", "..", containing "/" or NUL) are
refused; every directory is entered with ``O_NOFOLLOW | O_DIRECTORY`` relative to its
parent's descriptor, so neither a symlink the restore created nor one already in the
target is ever followed; files are created with ``O_EXCL | O_NOFOLLOW`` under a temporary
name and renamed into place (which replaces a symlink instead of writing through it).

Large files are written in order, with direct I/O, as their chunks are decoded in
parallel a few ahead. Large files that share many chunks are written together, their
chunks taken in order of offset, so a shared chunk is decoded once (see
``_write_staged``); small files run beside them on a thread of their own.

Every chunk is verified by ``load_blob`` before it is written; a damaged chunk fails
the files that hold it (reported with the pack's name) and their temporary files are
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
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .direct_io import ALIGN, AlignedBuffer, ThreadBuffers, pwrite_all
from .errors import DamagedObjectError
from .repository import Repository
from .scan import NullProgress, Progress
from .snapshots import find_snapshot
from .tree import Node, is_safe_name, load_tree

__all__ = ["RestoreResult", "restore"]

# files of at least this size are written in order through an aligned buffer, with
# direct I/O (see direct_io): restored data does not need a trip through the page cache
_DIRECT_MIN = 1 << 20
_STAGE = 4 << 20
_GROUP_FILES = 64
# large files sharing at least 1/_FAMILY_SHARE of their chunks with an earlier one are
# restored with it, up to _FAMILY_MAX together; decoded chunks used again: _KEEP_BYTES
_FAMILY_SHARE = 8
_FAMILY_MAX = 4
_KEEP_BYTES = 16 << 20
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
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


@dataclass(eq=False, slots=True)
class _Out:
    """A file being written by ``_Restore._write_staged``."""

    fd: int
    ids: list[bytes]
    buf: AlignedBuffer
    pos: int = 0  # file offset of the buffer's first byte
    written: int = 0
    error: OSError | DamagedObjectError | None = None


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
        self.stage_size = _STAGE + repo.chunker_params.max_size
        self.staging = ThreadBuffers(self.stage_size)
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
        buf = self.staging.get()
        buf.n = 0
        out = _Out(fd, ids, buf)
        self._write_staged([out])
        if out.error is not None:
            raise out.error
        return out.written

    def _write_staged(self, outs: list[_Out]) -> None:
        """Write the files of ``outs`` together: chunks decoded by the pool a few ahead,
        taken in order into each file's aligned buffer and written with direct I/O every
        ``_STAGE`` bytes. The chunks of all the files are taken in order of their offset,
        so a chunk that several files hold at about the same place (a fine-tuned copy
        and its original) is loaded and decoded once; one that comes back later is
        kept decoded while the budget allows. A failure is recorded on its file only."""
        assert self.chunk_pool is not None
        pool = self.chunk_pool
        index = self.repo.index
        seq: list[tuple[int, int, bytes]] = []  # (offset in its file, which file, chunk)
        for k, out in enumerate(outs):
            off = 0
            for bid in out.ids:
                seq.append((off, k, bid))
                loc = index.get(bid)
                off += loc.entry.raw_length if loc is not None else 0
        seq.sort(key=lambda t: (t[0], t[1]))
        uses = Counter(bid for _, _, bid in seq)
        loads: dict[bytes, Future[bytes]] = {}  # submitted, or decoded with uses left
        fresh: set[bytes] = set()  # submitted and not taken yet
        kept: OrderedDict[bytes, int] = OrderedDict()  # decoded with uses left: size
        kept_bytes = 0
        window = 3 * self.workers
        sub = 0  # next item of seq to submit

        def load(bid: bytes) -> Future[bytes]:
            fut = loads[bid] = pool.submit(self.repo.load_blob, bid)
            fresh.add(bid)
            return fut

        try:
            for i, (_off, k, bid) in enumerate(seq):
                while sub < len(seq) and (sub <= i or len(fresh) < window):
                    _, nk, nid = seq[sub]
                    if nid not in loads and outs[nk].error is None:
                        load(nid)
                    sub += 1
                out = outs[k]
                uses[bid] -= 1
                fut = loads.get(bid)
                if fut is None and out.error is None:
                    fut = load(bid)  # evicted from ``kept``: load again
                fresh.discard(bid)
                if uses[bid] == 0:
                    loads.pop(bid, None)
                    if bid in kept:
                        kept_bytes -= kept.pop(bid)
                if fut is None or out.error is not None:
                    continue
                try:
                    data = fut.result()
                except (OSError, DamagedObjectError) as exc:
                    out.error = exc
                    continue
                if uses[bid] and bid not in kept:
                    kept[bid] = len(data)
                    kept_bytes += len(data)
                    while kept_bytes > _KEEP_BYTES:
                        old, size = kept.popitem(last=False)
                        kept_bytes -= size
                        del loads[old]
                try:
                    self._stage(out, data)
                except OSError as exc:
                    out.error = exc
                del data
            for out in outs:
                if out.error is None:
                    try:
                        with out.buf.view[:out.buf.n] as tail:
                            pwrite_all(out.fd, tail, out.pos)  # aligned part direct
                    except OSError as exc:
                        out.error = exc
        finally:
            futs = list(loads.values())
            for f in futs:
                f.cancel()
            for f in futs:
                if not f.cancelled():
                    f.exception()  # wait: nothing may outlive the files

    def _stage(self, out: _Out, data: bytes) -> None:
        buf = out.buf
        buf.append(data)
        out.written += len(data)
        self.progress.on_bytes(len(data))
        if buf.n >= _STAGE:
            whole = buf.n & ~(ALIGN - 1)
            with buf.view[:whole] as part:
                pwrite_all(out.fd, part, out.pos)
            buf.view[:buf.n - whole] = buf.view[whole:buf.n]  # < ALIGN bytes
            out.pos += whole
            buf.n -= whole

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
        tmp = _tmp_name()
        fd = os.open(tmp, _FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            try:
                written = self._write_content(fd, item)
                self._check_and_finish(fd, item, written)
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

    def _check_and_finish(self, fd: int, item: _Item, written: int) -> None:
        if written != item.node["size"]:
            raise DamagedObjectError(
                f"content is {written} bytes, the snapshot says {item.node['size']}")
        self._finish_meta(fd, item.node)

    def restore_family(self, family: list[_Item]) -> list[int | OSError | DamagedObjectError]:
        """Restore large files that share chunks together (see ``_write_staged``); (bytes
        written or the error) for each. A file that fails leaves the others whole."""
        outcome: list[int | OSError | DamagedObjectError | None] = []
        started: list[tuple[int, _Item, int, str, _Out]] = []  # slot, item, dir, tmp, out
        try:
            for item in family:
                self.progress.on_file(item.path)
                pfd = -1
                try:
                    pfd = _open_dir(self.root_fd, item.comps[:-1])
                    tmp = _tmp_name()
                    fd = os.open(tmp, _FILE_FLAGS, 0o600, dir_fd=pfd)
                except OSError as exc:
                    if pfd >= 0:
                        os.close(pfd)
                    outcome.append(exc)
                    continue
                buf = self.staging.get() if not started else AlignedBuffer(self.stage_size)
                buf.n = 0
                ids = [bytes.fromhex(c) for c in item.node["content"]]
                started.append((len(outcome), item, pfd, tmp, _Out(fd, ids, buf)))
                outcome.append(None)
            self._write_staged([s[4] for s in started])
            for slot, item, pfd, tmp, out in started:
                try:
                    if out.error is not None:
                        raise out.error
                    try:
                        self._check_and_finish(out.fd, item, out.written)
                    finally:
                        os.close(out.fd)
                        out.fd = -1
                    os.rename(tmp, item.comps[-1], src_dir_fd=pfd, dst_dir_fd=pfd)
                except (OSError, DamagedObjectError) as exc:
                    outcome[slot] = exc
                    continue
                outcome[slot] = out.written
                with self._lock:
                    self.bytes += out.written
        finally:
            for n, (slot, _item, pfd, tmp, out) in enumerate(started):
                if out.fd >= 0:
                    os.close(out.fd)
                if not isinstance(outcome[slot], int):
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=pfd)
                os.close(pfd)
                if n:
                    out.buf.close()
        return [o if o is not None else DamagedObjectError("not restored") for o in outcome]

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

    def run_groups(self, groups: list[list[_Item]]
                   ) -> list[list[int | OSError | DamagedObjectError]]:
        """Restore every group; the outcome of each file, in order. Large files mostly
        wait on the disk, small ones on the CPU and directory updates: ``workers``
        threads take large files first and one more takes small files first, so the two
        kinds overlap instead of queueing (each thread takes the other kind once its own
        has run out)."""
        # largest first, so that no large job starts last and runs alone
        large = deque(sorted((i for i, g in enumerate(groups)
                              if g[0].node["size"] >= _DIRECT_MIN),
                             key=lambda i: -sum(f.node["size"] for f in groups[i])))
        small = deque(i for i, g in enumerate(groups) if g[0].node["size"] < _DIRECT_MIN)
        out: list[list[int | OSError | DamagedObjectError]] = [[] for _ in groups]
        lock = threading.Lock()
        failed = threading.Event()

        def work(queues: tuple[deque[int], ...]) -> None:
            while not failed.is_set():
                with lock:
                    todo = next((q for q in queues if q), None)
                    if todo is None:
                        return
                    i = todo.popleft()
                group = groups[i]
                try:
                    out[i] = (self.restore_family(group) if len(group) > 1 and todo is large
                              else self.restore_group(group))
                except BaseException:
                    failed.set()  # something unexpected: the others stop too
                    raise

        with ThreadPoolExecutor(self.workers + 1, thread_name_prefix="restore-file") as pool:
            runs = [pool.submit(work, (small, large))]
            runs += [pool.submit(work, (large, small)) for _ in range(self.workers)]
            for run in runs:
                run.result()
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


def _families(large: list[_Item]) -> dict[int, list[_Item]]:
    """Large files, each with the earlier one it shares most chunks with when that is at
    least 1/_FAMILY_SHARE of its own (a fine-tuned copy and its original), else alone;
    keyed by ``id()`` of each family's first file."""
    owner: dict[str, int] = {}  # chunk: the last family that holds it
    fams: list[list[_Item]] = []
    for f in large:
        content: list[str] = f.node["content"]
        shared = Counter(owner[c] for c in set(content) if c in owner)
        join = next((fi for fi, n in shared.most_common()
                     if n * _FAMILY_SHARE >= len(content) and len(fams[fi]) < _FAMILY_MAX),
                    None)
        if join is None:
            join = len(fams)
            fams.append([])
        fams[join].append(f)
        for c in content:
            owner[c] = join  # the latest: a full family passes its chunks on
    return {id(fam[0]): fam for fam in fams}


def _groups(files: list[_Item]) -> list[list[_Item]]:
    """Small files in runs of one directory (one thread creates them: threads creating
    files in the same directory contend on its lock), large files alone or with those
    they share chunks with, at the place of the first."""
    fams = _families([f for f in files if f.node["size"] >= _DIRECT_MIN])
    groups: list[list[_Item]] = []
    run: list[_Item] = []
    for f in files:
        if f.node["size"] >= _DIRECT_MIN:
            fam = fams.get(id(f))
            if fam is not None:  # else restored with the first of its family
                groups.append(fam)
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
        # chunk reads wait on the disk (direct I/O has no readahead): more of them than cores
        r.chunk_pool = ThreadPoolExecutor(2 * nworkers, thread_name_prefix="restore-chunk")
        try:
            groups = _groups(primary)
            for group, outcomes in zip(groups, r.run_groups(groups), strict=True):
                for f, outcome in zip(group, outcomes, strict=True):
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

