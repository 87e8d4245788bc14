"""Rebuild the index from the packs themselves, salvaging what damaged packs still hold.

A backup trusts the index: it does not store again a chunk the index names, even when the
pack holding it was lost or damaged since. ``repair`` makes the index say only what the
stored packs hold:

1. every stored pack's header is read (with ``read_data``: the whole pack, whose bytes must
   match its name and whose every blob must decrypt to content matching its id);
2. an intact pack is indexed as its header lists it, whether or not an index named it;
3. from a damaged pack (an unreadable header; with ``read_data`` also a damaged blob or
   bytes that do not match the name) the blobs that still decrypt and match their ids,
   found through its header or, when that is unreadable, through the old index, are
   copied, still sealed, into new packs;
4. one new index file lists all of that and supersedes every index file there was (the
   damaged ones too), which are then deleted; then the damaged packs whose blobs were
   salvaged are deleted (nothing else in them can be read). A pack that cannot be read at
   all (an I/O error) is left in place and in the index as it was: it is judged again
   by the next verify or repair, not dropped on a transient error.

Blobs no pack holds any more leave the index, so the next backup stores them again where
the files still exist. Blob ids depend only on content, so that also makes whole again the
older snapshots that need the same data. Order gives crash safety, as for prune: new
packs, then the new index, then the old index files, then the damaged packs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import blake3

from .errors import DamagedObjectError, RepositoryError
from .index import BlobIds, pack_entries, unpack_entries
from .packs import (
    _ENTRY,
    PackEntry,
    check_blobs,
    pack_id_of,
    pack_name,
    read_header,
    whole_pack_header,
)
from .prune import PackOutput
from .repository import Repository
from .verify import ProgressFn

__all__ = ["RepairResult", "repair"]


@dataclass
class RepairResult:
    dry_run: bool = False
    read_data: bool = False
    packs_stored: int = 0  # pack files found in the repository
    packs_indexed: int = 0  # intact packs the new index lists (copies not counted)
    adopted_packs: list[str] = field(default_factory=list)  # intact, named by no index
    missing_packs: list[str] = field(default_factory=list)  # indexed but not stored
    damaged_packs: list[str] = field(default_factory=list)  # left out of the new index
    unreadable_packs: list[str] = field(default_factory=list)  # I/O errors: left as indexed
    damaged_index_files: list[str] = field(default_factory=list)
    foreign_files: list[str] = field(default_factory=list)  # under packs/, no pack's name
    blobs_salvaged: int = 0  # copied out of damaged packs
    blobs_lost: int = 0  # named by the old index, held by no pack now
    packs_written: int = 0
    bytes_written: int = 0
    index_files_replaced: int = 0
    packs_deleted: int = 0  # damaged packs removed once their good blobs were copied
    changed: bool = False  # the index was (or, in a dry run, would be) rewritten

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verb = "would" if self.dry_run else "did"
        head = "repair (dry run)" if self.dry_run else "repair"
        lines = [f"{head}: {self.packs_stored} pack(s) stored, {self.packs_indexed} intact"
                 + (" (every blob read)" if self.read_data else " (headers read)")]
        for label, names in (("missing", self.missing_packs),
                             ("damaged", self.damaged_packs),
                             ("unreadable, left as indexed", self.unreadable_packs),
                             ("adopted (named by no index)", self.adopted_packs),
                             ("damaged index file(s)", self.damaged_index_files),
                             ("not pack files (left alone)", self.foreign_files)):
            if names:
                shown = ", ".join(n.rsplit("/", 1)[-1][:16] for n in names[:5])
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                lines.append(f"{label}: {len(names)}: {shown}{more}")
        if not self.changed and not self.damaged_packs:
            lines.append("the index already matches the packs; nothing to do")
            return "\n".join(lines)
        if self.damaged_packs:
            lines.append(f"{verb} salvage {self.blobs_salvaged} intact blob(s) of the damaged "
                         f"pack(s) into {self.packs_written} new pack(s)")
        if self.blobs_lost:
            lines.append(f"{self.blobs_lost} blob(s) the index named are in no pack any more")
        deleted = len(self.damaged_packs) if self.dry_run else self.packs_deleted
        done = []
        if self.changed:
            done.append(f"replace {self.index_files_replaced} index file(s) with one")
        if deleted:
            done.append(f"delete {deleted} damaged pack(s)")
        lines.append(f"{verb} {' and '.join(done)}")
        return "\n".join(lines)


def repair(repo: Repository, *, read_data: bool = False, dry_run: bool = False,
           suspects: frozenset[str] = frozenset(),
           progress: ProgressFn | None = None) -> RepairResult:
    """Make the index list exactly what the stored packs hold; see the module docstring.
    ``suspects`` (pack names verify reported) are read whole even without ``read_data``.
    The caller holds an exclusive lock."""
    tick = progress or (lambda _phase, _done, _total: None)
    storage = repo.storage
    result = RepairResult(dry_run=dry_run, read_data=read_data)

    index_files = repo.object_names("index")
    result.damaged_index_files = repo.load_index()
    if repo.object_names("index") != index_files:
        raise RepositoryError("index files changed while repair read them (is a backup "
                              "running?); repair aborted, nothing was changed")
    # the old index is read one pack at a time, the new one kept packed, and the blobs
    # held marked in a bitmap over the old index: entry objects and sets of ids for every
    # blob took ~400 bytes a blob
    index = repo.index
    old = set(index.packs)

    def old_raw(pid: bytes) -> bytes:
        return repo.index.raw_entries(pid) if pid in old else b""

    stored = storage.list("packs/")
    result.packs_stored = len(stored)  # foreign files are subtracted below
    stored_names = set(stored)
    result.missing_packs = sorted(pack_name(p) for p in old if pack_name(p) not in stored_names)

    # 1. which packs are intact (indexed as their headers say), damaged or unreadable
    new: dict[bytes, bytes] = {}  # pack -> its entries, packed
    kept_unread: set[bytes] = set()  # unreadable packs kept as indexed: not safe copies
    damaged: list[tuple[str, bytes]] = []
    for i, name in enumerate(stored):
        tick("packs", i, len(stored))
        pid = pack_id_of(name)
        if pid is None:
            result.foreign_files.append(name)  # not ours to judge: left alone
            continue
        try:
            entries, good = _examine(repo, name, pid, old_raw(pid),
                                     read_data or name in suspects)
        except OSError:
            # maybe a flaky disk: judged later, so kept as the old index has it (else a
            # prune would delete it as named by no index)
            result.unreadable_packs.append(name)
            if pid in old:
                new[pid] = old_raw(pid)
                kept_unread.add(pid)
            continue
        if good is None:
            new[pid] = pack_entries(entries)
            result.packs_indexed += 1
            if pid not in old:
                result.adopted_packs.append(name)
        else:
            damaged.append((name, pid))
    result.damaged_packs = [name for name, _ in damaged]
    result.packs_stored -= len(result.foreign_files)

    # 2. from the damaged packs, the intact blobs no other pack holds (read again: a
    # damaged pack is rare, holding all of them in memory is not)
    held = BlobIds(index)  # the blob ids intact packs hold
    for p, raw in new.items():
        if p not in kept_unread:
            _add_packed(held, raw)
    out = PackOutput(repo, dry_run)
    deletable: list[str] = []
    for i, (name, pid) in enumerate(damaged):
        tick("salvage", i, len(damaged))
        try:
            entries, good = _examine(repo, name, pid, old_raw(pid), True)
        except OSError:
            result.unreadable_packs.append(name)  # gone unreadable since: kept
            result.damaged_packs.remove(name)
            if pid in old:
                new[pid] = old_raw(pid)
                kept_unread.add(pid)
            continue
        if good is None:  # intact when read whole: reading its header alone failed
            new[pid] = pack_entries(entries)
            result.damaged_packs.remove(name)
            result.packs_indexed += 1
            continue
        deletable.append(name)
        for e, sealed in good:
            if held.add(e.id):
                out.add(e, sealed)
                result.blobs_salvaged += 1
    out.finish()
    result.packs_written = len(out.packs)
    result.bytes_written = out.bytes_written
    new.update((p, pack_entries(e)) for p, e in out.packs.items())

    for p in kept_unread:
        _add_packed(held, old_raw(p))
    result.blobs_lost = len(index) - len(held.bits)  # the old index's blobs no pack holds
    result.changed = bool(result.damaged_index_files or new.keys() != old
                          or any(new[p] != index.raw_entries(p) for p in old))
    if result.changed:
        result.index_files_replaced = len(index_files)
    if dry_run:
        return result
    if result.changed:
        repo.replace_index(new, index_files, tick)
    # 3. the damaged packs last: what could be read of them is in the new packs, and the
    # index (old or new) names none of them any more
    for name in deletable:
        storage.delete(name)
        result.packs_deleted += 1
    del index, new, held  # the old index is freed before the new one is read
    repo.load_index()
    return result


def _add_packed(ids: BlobIds, raw: bytes) -> None:
    for entry in _ENTRY.iter_unpack(raw):
        ids.add(entry[-1])


def _examine(repo: Repository, name: str, pid: bytes, indexed: bytes,
             read_data: bool) -> tuple[list[PackEntry], list[tuple[PackEntry, bytes]] | None]:
    """(entries, None) for an intact pack; for a damaged one ([], its blobs that still
    decrypt and match their ids, found through its header or else through ``indexed``,
    the old index's entries, packed). OSError when the pack cannot be read at all."""
    if not read_data:
        try:
            return read_header(repo.crypto, repo.storage, name, repo.storage.size(name)), None
        except DamagedObjectError:
            pass  # salvage below, through the old index's entries
    data = repo.storage.read(name)
    try:
        header: list[PackEntry] | None = whole_pack_header(repo.crypto, data, name)
    except DamagedObjectError:
        header = None
    candidates = header if header is not None else unpack_entries(indexed)
    good = [(e, sealed) for e, sealed, exc in check_blobs(repo.crypto, data, candidates, name)
            if exc is None]
    if (header is not None and len(good) == len(header)
            and blake3.blake3(data).digest() == pid):
        return header, None
    return [], good
