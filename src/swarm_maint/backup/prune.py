"""Reclaim the space of blobs no snapshot uses.

Mark: walk every snapshot's trees; the tree and data blobs reached are "used". Any
snapshot or tree that cannot be read, or a used blob that no index lists, aborts prune
before anything is written: an incomplete mark phase must never delete data.

Sweep: a pack with no used blob is deleted; a pack whose used fraction (by stored bytes)
is below ``repack_threshold`` is repacked: its used blobs are copied, still sealed and
after being checked, into new packs. Then one new index file lists every pack that stays
(untouched packs and new ones) and supersedes every index file that existed.

Order gives crash safety, as for backups: new packs, then the new index (durable), then
the old index files, then the packs no index names any more. A crash before the new index
leaves only extra packs no index names; a crash after it leaves superseded index files
and packs no index names, which the next prune removes. Every snapshot stays restorable.

Packs no index names are deleted only when older than ``grace_seconds``: a running or
crashed backup may still index a young one (the CLI also holds an exclusive lock).
"""

from __future__ import annotations

import array
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError
from .errors import DamagedObjectError, RepositoryError
from .index import ENTRY_SIZE, BlobBits, BlobIds
from .packs import _ENTRY, PACK_TARGET, PackEntry, PackWriter, decode_blob, pack_id_of, pack_name
from .repository import Repository
from .storage import LocalStorage, Storage, check_name
from .verify import ProgressFn, parse_snapshot_tree, parse_tree

__all__ = ["GRACE_SECONDS", "PackOutput", "PruneResult", "mark_used_blobs", "prune"]

GRACE_SECONDS = 3600.0


@dataclass
class PruneResult:
    dry_run: bool = False
    snapshots: int = 0
    blobs_kept: int = 0  # distinct used blobs
    blobs_removed: int = 0  # blob entries dropped with deleted or repacked packs
    packs_total: int = 0  # packs the index named
    packs_kept: int = 0  # untouched
    packs_deleted: int = 0  # no used blob
    packs_repacked: int = 0  # partly used, copied into new packs
    packs_written: int = 0  # new packs
    missing_packs_dropped: int = 0  # named by the index, absent, holding nothing used
    unreferenced_deleted: int = 0  # no index named them, older than the grace period
    unreferenced_kept: int = 0  # no index named them, young (or age unknown)
    index_files_replaced: int = 0
    bytes_deleted: int = 0
    bytes_written: int = 0
    bytes_freed: int = 0
    deleted_packs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would" if self.dry_run else "did"
        lines = [
            f"prune ({'dry run' if self.dry_run else 'done'}): {self.snapshots} snapshot(s), "
            f"{self.blobs_kept} blob(s) in use",
            f"{verb} delete {self.packs_deleted} unused pack(s), repack {self.packs_repacked} "
            f"into {self.packs_written}, delete {self.unreferenced_deleted} unreferenced "
            f"pack(s) (kept {self.unreferenced_kept} younger than the grace period)",
            f"{verb} free {_human(self.bytes_freed)} ({_human(self.bytes_deleted)} deleted, "
            f"{_human(self.bytes_written)} written)",
        ]
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# -- mark -------------------------------------------------------------------------------


def mark_used_blobs(repo: Repository,
                    progress: ProgressFn | None = None) -> tuple[BlobBits, int]:
    """(positions of every tree and data blob some snapshot reaches, number of
    snapshots), valid while the repository's index is not changed.

    Raises DamagedObjectError when a snapshot or tree cannot be read or a reached blob is
    not in the index: the used set would be incomplete.
    """
    used = BlobIds(repo.index)
    missing: list[str] = []
    snap_ids = repo.list_objects("snapshots")
    for i, sid in enumerate(snap_ids):
        if progress is not None:
            progress("mark", i, len(snap_ids))
        try:
            root = parse_snapshot_tree(repo.load_object("snapshots", sid))
        except (DamagedObjectError, OSError, ValueError) as exc:
            raise DamagedObjectError(
                f"snapshot {sid[:8]} cannot be read ({exc}); prune aborted, nothing was "
                "deleted (run `swarm-maint backup verify`)", f"snapshots/{sid}") from None
        stack = [root]
        while stack:
            tid = stack.pop()
            if not used.add(tid):
                continue  # walked already
            if tid in used.others:
                missing.append(f"tree {tid.hex()} (snapshot {sid[:8]})")
                continue
            try:
                nodes = parse_tree(repo.load_blob(tid))
            except (DamagedObjectError, OSError, ValueError, TypeError) as exc:
                raise DamagedObjectError(
                    f"tree {tid.hex()} of snapshot {sid[:8]} cannot be read ({exc}); prune "
                    "aborted, nothing was deleted (run `swarm-maint backup verify`)",
                    tid.hex()) from None
            for n in nodes:
                for b in n.content:
                    if used.add(b) and b in used.others:
                        missing.append(f"blob {b.hex()} (snapshot {sid[:8]})")
                if n.subtree is not None:
                    stack.append(n.subtree)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DamagedObjectError(
            f"{len(missing)} blob(s) used by snapshots are in no index: "
            f"{', '.join(missing[:5])}{more}; prune aborted, nothing was deleted "
            "(run `swarm-maint backup verify`)")
    return used.bits, len(snap_ids)


# -- sweep ------------------------------------------------------------------------------


def _object_mtime(storage: Storage, name: str) -> float | None:
    """When the object was written, where the storage can tell; None otherwise."""
    fn = getattr(storage, "mtime", None)
    if callable(fn):
        return float(fn(name))
    if isinstance(storage, LocalStorage):
        return os.stat(storage.root / check_name(name)).st_mtime
    return None


class PackOutput:
    """Writes copied blobs into new packs (nothing is written in a dry run)."""

    def __init__(self, repo: Repository, dry_run: bool) -> None:
        self._repo = repo
        self._dry_run = dry_run
        self._writer = PackWriter(repo.crypto)
        self.packs: dict[bytes, list[PackEntry]] = {}
        self.bytes_written = 0

    def add(self, entry: PackEntry, sealed: bytes) -> None:
        self._writer.add(entry.type, entry.id, entry.compression, sealed, entry.raw_length)
        if len(self._writer) >= PACK_TARGET:
            self.finish()

    def finish(self) -> None:
        if not self._writer.entries:
            return
        pack_id, data = self._writer.finish()
        entries = list(self._writer.entries)
        try:
            if not self._dry_run:
                self._repo.storage.write(pack_name(pack_id), data)
            self.bytes_written += len(data)
        finally:
            data.release()
        self._writer = PackWriter(self._repo.crypto, self._writer.buf)  # reuse the buffer
        self.packs[pack_id] = entries


def prune(repo: Repository, *, repack_threshold: float = 0.5,
          grace_seconds: float = GRACE_SECONDS, dry_run: bool = False,
          progress: ProgressFn | None = None,
          clock: Callable[[], float] | None = None) -> PruneResult:
    """Delete unused packs, repack mostly unused ones; see the module docstring."""
    if not 0.0 <= repack_threshold <= 1.0:
        raise UsageError("repack threshold must be between 0 and 1")
    if grace_seconds < 0:
        raise UsageError("grace period must be >= 0 seconds")
    tick = progress or (lambda _phase, _done, _total: None)
    storage = repo.storage
    result = PruneResult(dry_run=dry_run)

    index_files = repo.object_names("index")
    damaged = repo.load_index()
    if repo.object_names("index") != index_files:
        # only what this prune read may be superseded; the CLI's lock prevents this
        raise RepositoryError("index files changed while prune read them (is a backup "
                              "running?); prune aborted, nothing was deleted")
    if damaged:
        raise DamagedObjectError(
            f"{len(damaged)} index file(s) cannot be read ({', '.join(damaged[:3])}); prune "
            "refused: the packs they list would look unused (run `swarm-maint backup "
            "verify`)", damaged[0])

    used, result.snapshots = mark_used_blobs(repo, tick)
    index = repo.index
    stored = set(storage.list("packs/"))
    pack_ids = list(index.packs)
    result.packs_total = len(pack_ids)

    # each used blob is kept in one pack: the first present pack that holds it (so
    # packs are read one at a time, and nothing per blob is kept but two bits)
    claimed = BlobBits(index.positions)
    keep: dict[bytes, list[PackEntry] | bytes] = {}  # pack -> its entries, packed
    repack: dict[bytes, list[PackEntry]] = {}  # pack -> its entries to copy
    delete: list[bytes] = []
    n_entries: dict[bytes, int] = {}  # of the packs deleted or repacked
    for pid in pack_ids:
        if pack_name(pid) not in stored:
            continue  # dropped below, once no used blob is found to be only there
        raw = index.raw_entries(pid)
        mine = array.array("I")  # the entries kept here, by number: no object per blob
        total = mine_bytes = 0
        for i, (_t, _c, _o, length, _r, bid) in enumerate(_ENTRY.iter_unpack(raw)):
            total += length
            pos = index.position(bid)
            if pos in used and claimed.add(pos):
                mine.append(i)
                mine_bytes += length
        if not mine:
            delete.append(pid)
        elif total > 0 and mine_bytes / total < repack_threshold:
            repack[pid] = [PackEntry(*_ENTRY.unpack_from(raw, i * ENTRY_SIZE)) for i in mine]
        else:
            keep[pid] = raw
            continue
        n_entries[pid] = len(raw) // ENTRY_SIZE
    lost = used.first_not_in(claimed)
    if lost >= 0:
        raise DamagedObjectError(
            f"{len(used) - len(claimed)} used blob(s) are only in missing packs (e.g. "
            f"{index.id_at_position(lost).hex()}); prune aborted, nothing was deleted (run "
            "`swarm-maint backup verify`)")
    result.blobs_kept = len(used)
    del used, claimed
    for pid in pack_ids:
        if pack_name(pid) not in stored:
            result.missing_packs_dropped += 1
            result.warnings.append(f"{pack_name(pid)}: missing, holds nothing in use; "
                                   "dropped from the index")

    # copy the used blobs of packs to repack (checked: damage is never copied)
    out = PackOutput(repo, dry_run)
    repacked: list[bytes] = []
    for i, (pid, copied) in enumerate(repack.items()):
        tick("repack", i, len(repack))
        name = pack_name(pid)
        try:
            data = storage.read(name)
            blobs = []
            for e in copied:
                sealed = data[e.offset:e.offset + e.length]
                decode_blob(repo.crypto, e, sealed, f"{name} blob {e.id.hex()}")
                blobs.append((e, sealed))
        except (DamagedObjectError, OSError) as exc:
            result.warnings.append(f"{name}: not repacked, kept as it is ({exc})")
            keep[pid] = index.raw_entries(pid)
            continue
        for e, sealed in blobs:
            out.add(e, sealed)
        repacked.append(pid)
    out.finish()

    # packs no index names
    now = clock() if clock is not None else time.time()
    indexed_names = {pack_name(p) for p in pack_ids}
    old_unreferenced: list[str] = []
    for name in sorted(stored - indexed_names):
        if pack_id_of(name) is None:
            continue  # not a pack (someone else's file): not prune's to delete
        try:
            mtime = _object_mtime(storage, name)
        except OSError:
            mtime = None
        if mtime is not None and now - mtime >= grace_seconds:
            old_unreferenced.append(name)
        else:
            result.unreferenced_kept += 1

    to_delete = [pack_name(p) for p in delete + repacked] + old_unreferenced
    sizes: dict[str, int] = {}
    for name in to_delete:
        try:
            sizes[name] = storage.size(name)
        except OSError:
            sizes[name] = 0
    result.packs_kept = len(keep)
    result.packs_deleted = len(delete)
    result.packs_repacked = len(repacked)
    result.packs_written = len(out.packs)
    result.unreferenced_deleted = len(old_unreferenced)
    result.blobs_removed = (sum(n_entries[p] for p in delete)
                            + sum(n_entries[p] - len(repack[p]) for p in repacked))
    result.bytes_deleted = sum(sizes.values())
    result.bytes_written = out.bytes_written
    result.bytes_freed = result.bytes_deleted - result.bytes_written
    result.deleted_packs = to_delete

    rewrite = bool(delete or repacked or result.missing_packs_dropped)
    # superseded index files a crashed prune left, and empty ones: nothing reads them
    stale_index = [n for n in index_files if n not in repo.index.files]
    if dry_run:
        result.index_files_replaced = len(index_files) if rewrite else len(stale_index)
        return result
    if not rewrite:
        for name in stale_index:
            storage.delete(name)
        result.index_files_replaced = len(stale_index)

    if rewrite:
        # 1. the new packs are durable (written above); 2. the new index
        keep.update(out.packs)
        # 3. the index files it supersedes
        repo.replace_index(keep, index_files, tick)
        result.index_files_replaced = len(index_files)
    # 4. packs no index names any more
    for i, name in enumerate(to_delete):
        tick("delete", i, len(to_delete))
        storage.delete(name)
    del keep, index  # the old index is freed before the new one is read
    repo.load_index()
    return result

