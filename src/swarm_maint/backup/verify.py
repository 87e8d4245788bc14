"""Check a repository: index files, packs, snapshots and trees; optionally every byte.

Structure (always): every index file decodes; every pack the index names exists and has
the size its entries imply; every snapshot decrypts and parses; every tree it reaches
loads and parses; every blob a tree refers to is in the index. Packs no index names are
warnings only: a crash (or a running backup) can leave them, a later backup adopts them
(orphan_check.py says which), and prune removes those never adopted.

With ``read_data`` (or ``read_data_subset``, a percentage of the packs chosen at random)
each selected pack is read whole: its unkeyed BLAKE3 must equal its name, its header must
list what the index lists, and every blob must decrypt to content matching its id.

Every problem names the object; problems about blobs also name the files (snapshot, path)
that need them, found by walking the trees a second time, only into the trees that lead
to a damaged or missing blob.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import blake3

from ..errors import UsageError
from .crypto import NONCE_SIZE, TAG_SIZE
from .errors import DamagedObjectError
from .index import BlobIds, decode_index_raw, unpack_entries
from .packs import (
    _ENTRY,
    PackEntry,
    check_blobs,
    pack_id_of,
    pack_name,
    read_header,
    whole_pack_header,
)
from .repository import Repository, is_object_name

__all__ = [
    "Problem",
    "ProgressFn",
    "TreeNode",
    "VerifyReport",
    "expected_pack_size",
    "parse_snapshot_tree",
    "parse_tree",
    "verify",
]

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)

MAX_AFFECTED = 50  # (snapshot, path) pairs kept per problem; the rest are only counted
_MAX_DEPTH = 4096
_HEADER_FIXED = 9  # magic, version, count


# -- trees ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeNode:
    name: str
    type: str
    content: tuple[bytes, ...] = ()
    subtree: bytes | None = None


def _hex_id(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError(f"{what}: not a blob id: {value!r}")
    return bytes.fromhex(value)


def parse_tree(data: bytes) -> list[TreeNode]:
    """The nodes of a tree blob (``{"nodes": [...]}``); ValueError when malformed."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise ValueError("not a tree (no node list)")
    out = []
    for i, node in enumerate(doc["nodes"]):
        if not isinstance(node, dict):
            raise ValueError(f"node {i} is not an object")
        name, kind = node.get("name"), node.get("type")
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise ValueError(f"node {i}: invalid name {name!r}")
        if not isinstance(kind, str):
            raise ValueError(f"node {name!r}: invalid type {kind!r}")
        if kind == "file":
            content = node.get("content") or []
            if not isinstance(content, list):
                raise ValueError(f"node {name!r}: content is not a list")
            ids = tuple(_hex_id(c, f"node {name!r}") for c in content)
            out.append(TreeNode(name, kind, content=ids))
        elif kind == "dir":
            out.append(TreeNode(name, kind, subtree=_hex_id(node.get("subtree"),
                                                             f"node {name!r}")))
        else:
            out.append(TreeNode(name, kind))
    return out


def parse_snapshot_tree(obj: dict[str, Any]) -> bytes:
    """The root tree id of a snapshot object; ValueError when it has none."""
    if not isinstance(obj, dict):
        raise ValueError("snapshot is not an object")
    return _hex_id(obj.get("tree"), "snapshot tree")


def expected_pack_size(entries: Iterable[PackEntry]) -> int:
    """The size of a pack holding exactly ``entries`` (as PackWriter lays it out)."""
    end = 0
    n = 0
    for e in entries:
        end = max(end, e.offset + e.length)
        n += 1
    return end + NONCE_SIZE + _HEADER_FIXED + n * _ENTRY.size + TAG_SIZE + 4


# -- the report -------------------------------------------------------------------------


@dataclass
class Problem:
    category: str
    name: str  # the object: "packs/ab/ab12…", "index/…", "snapshots/…", a blob id
    message: str
    pack: str | None = None
    blob: str | None = None
    affected: list[tuple[str, str]] = field(default_factory=list)  # (snapshot, path)
    affected_total: int = 0
    blobs: set[bytes] = field(default_factory=set, repr=False)  # whose files to find

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"category": self.category, "name": self.name,
                             "message": self.message}
        if self.pack is not None:
            d["pack"] = self.pack
        if self.blob is not None:
            d["blob"] = self.blob
        if self.blobs:
            d["affected"] = [{"snapshot": s, "path": p} for s, p in self.affected]
            d["affected_total"] = self.affected_total
        return d


_ERROR_CATEGORIES = (
    "damaged_indexes",
    "missing_packs",
    "damaged_packs",
    "damaged_snapshots",
    "damaged_trees",
    "missing_blobs",
    "damaged_blobs",
)
_WARNING_CATEGORIES = ("unreferenced_packs", "foreign_files")


@dataclass
class VerifyReport:
    damaged_indexes: list[Problem] = field(default_factory=list)
    missing_packs: list[Problem] = field(default_factory=list)
    damaged_packs: list[Problem] = field(default_factory=list)  # size, header, hash
    unreferenced_packs: list[Problem] = field(default_factory=list)  # warnings
    foreign_files: list[Problem] = field(default_factory=list)  # warnings: not objects
    damaged_snapshots: list[Problem] = field(default_factory=list)
    damaged_trees: list[Problem] = field(default_factory=list)
    missing_blobs: list[Problem] = field(default_factory=list)
    damaged_blobs: list[Problem] = field(default_factory=list)
    index_files: int = 0
    packs: int = 0
    snapshots: int = 0
    trees: int = 0
    blobs_referenced: int = 0
    packs_read: int = 0
    blobs_read: int = 0
    bytes_read: int = 0
    read_data: bool = False
    read_data_percent: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        return [p for c in _ERROR_CATEGORIES for p in getattr(self, c)]

    @property
    def warnings(self) -> list[Problem]:
        return [p for c in _WARNING_CATEGORIES for p in getattr(self, c)]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def repairable(self) -> bool:
        """Damage `backup repair` acts on: lost or damaged packs and index files."""
        return bool(self.damaged_indexes or self.missing_packs or self.damaged_packs
                    or self.damaged_blobs)

    @property
    def next_step(self) -> str | None:
        """What to do about the damage found; None when there is none."""
        if self.repairable:
            data = " --read-data" if self.damaged_blobs or (self.read_data
                                                           and self.damaged_packs) else ""
            return (f"run `swarm-maint backup repair{data}` to rebuild the index from the "
                    "packs, then back up again")
        if self.errors and not (self.missing_blobs or self.damaged_trees):
            return ("`swarm-maint backup forget ID` the snapshots that cannot be read "
                    "(nothing else can bring them back)")
        if self.errors:
            return ("back up the same paths again (data that still exists is stored again "
                    "and makes these snapshots whole), or `swarm-maint backup forget ID` "
                    "the damaged snapshots")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": {c: [p.to_dict() for p in getattr(self, c)]
                         for c in _ERROR_CATEGORIES + _WARNING_CATEGORIES},
            "checked": {
                "index_files": self.index_files, "packs": self.packs,
                "snapshots": self.snapshots, "trees": self.trees,
                "blobs_referenced": self.blobs_referenced, "packs_read": self.packs_read,
                "blobs_read": self.blobs_read, "bytes_read": self.bytes_read,
                "read_data": self.read_data, "read_data_percent": self.read_data_percent,
            },
        }

    def lines(self) -> list[str]:
        out = []
        for p in self.errors:
            out.append(f"error: {p.message}")
            out.extend(_affected_lines(p))
        for p in self.warnings:
            out.append(f"warning: {p.message}")
        checked = (f"checked {self.index_files} index file(s), {self.packs} pack(s), "
                   f"{self.snapshots} snapshot(s), {self.trees} tree(s)")
        if self.read_data:
            checked += (f"; read {self.packs_read} pack(s) ({self.read_data_percent:g}%), "
                        f"{self.blobs_read} blob(s), {self.bytes_read} bytes")
        out.append(checked)
        if self.ok:
            w = f" ({len(self.warnings)} warning(s))" if self.warnings else ""
            out.append(f"no errors were found{w}")
        else:
            out.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s): "
                       f"the repository is damaged; {self.next_step}")
        return out


def _affected_lines(p: Problem) -> list[str]:
    if not p.blobs:
        return []
    if not p.affected:
        return ["  needed by no snapshot"]
    out = [f"  needed by snapshot {s} path {path}" for s, path in p.affected]
    if p.affected_total > len(p.affected):
        out.append(f"  ... and {p.affected_total - len(p.affected)} more")
    return out


# -- the check --------------------------------------------------------------------------


def verify(repo: Repository, *, read_data: bool = False,
           read_data_subset: float | None = None, progress: ProgressFn | None = None,
           rng: random.Random | None = None) -> VerifyReport:
    """Check ``repo``; never changes it. ``read_data_subset`` is a percentage (0, 100]."""
    if read_data_subset is not None and not 0 < read_data_subset <= 100:
        raise UsageError("read_data_subset must be a percentage in (0, 100]")
    report = VerifyReport()
    storage = repo.storage
    tick = progress or (lambda _phase, _done, _total: None)

    # index files
    listed = storage.list("index/")
    index_names = [n for n in listed if is_object_name(n)]
    for name in sorted(set(listed) - set(index_names)):
        report.foreign_files.append(Problem(
            "foreign_files", name, f"{name} is not an index file (left alone)"))
    report.index_files = len(index_names)
    for i, name in enumerate(index_names):
        tick("index", i, len(index_names))
        try:
            raw = storage.read(name)
            if blake3.blake3(raw).hexdigest() != name.rsplit("/", 1)[1]:
                raise DamagedObjectError(f"{name}: content does not match its name", name)
            decode_index_raw(repo.crypto, raw, name)
        except (DamagedObjectError, OSError) as exc:
            report.damaged_indexes.append(Problem("damaged_indexes", name,
                                                  f"index file {name} is damaged: {exc}"))

    # packs: presence, size, and the ones no index names (entries are decoded one pack
    # at a time: objects for every blob at once took ~150 bytes each)
    stored = set(storage.list("packs/"))
    index = repo.index
    indexed = {pack_name(pid): pid for pid in index.packs}
    report.packs = len(indexed)
    present: list[tuple[bytes, str]] = []
    for i, (name, pid) in enumerate(sorted(indexed.items())):
        tick("packs", i, len(indexed))
        raw = index.raw_entries(pid)
        if name not in stored:
            entries = unpack_entries(raw)
            report.missing_packs.append(Problem(
                "missing_packs", name, f"pack {name} is named by the index but missing "
                f"({len(entries)} blob(s) lost)", pack=name, blobs={e.id for e in entries}))
            continue
        present.append((pid, name))
        problem = _check_pack_size(repo, name, raw)
        if problem is not None:
            report.damaged_packs.append(problem)
    for name in sorted(set(stored) - set(indexed)):
        if pack_id_of(name) is None:
            report.foreign_files.append(Problem(
                "foreign_files", name, f"{name} is not a pack file (left alone)"))
            continue
        try:
            size = storage.size(name)
        except OSError:
            size = -1
        report.unreferenced_packs.append(Problem(
            "unreferenced_packs", name, f"pack {name} ({size} bytes) is not named by any "
            "index (left by an interrupted backup or prune; a later backup adopts it, "
            "prune removes it)", pack=name))

    # snapshots and trees
    graph: dict[bytes, list[bytes]] = {}  # tree -> its subtrees
    roots: list[tuple[str, bytes]] = []
    referenced = BlobIds(index)  # what snapshots reach
    failed: set[bytes] = set()
    snap_ids = repo.list_objects("snapshots")
    report.snapshots = len(snap_ids)
    for i, sid in enumerate(snap_ids):
        tick("snapshots", i, len(snap_ids))
        name = f"snapshots/{sid}"
        try:
            root = parse_snapshot_tree(repo.load_object("snapshots", sid))
        except (DamagedObjectError, OSError, ValueError) as exc:
            report.damaged_snapshots.append(Problem(
                "damaged_snapshots", name, f"snapshot {sid[:8]} cannot be read: {exc}"))
            continue
        roots.append((sid, root))
        _walk_unique(repo, root, graph, referenced, failed, report)
    report.trees = len(graph)
    report.blobs_referenced = len(referenced)
    for bid in sorted(referenced.others):
        report.missing_blobs.append(Problem(
            "missing_blobs", bid.hex(), f"missing blob {bid.hex()}: no index lists it",
            blob=bid.hex(), blobs={bid}))

    # data
    if read_data or read_data_subset is not None:
        percent = 100.0 if read_data or read_data_subset is None else read_data_subset
        report.read_data = True
        report.read_data_percent = percent
        selected = present
        if percent < 100 and present:
            k = max(1, math.ceil(len(present) * percent / 100))
            selected = sorted((rng or random.Random()).sample(present, k))
        for i, (pid, name) in enumerate(selected):
            tick("read-data", i, len(selected))
            _read_pack(repo, pid, name, unpack_entries(index.raw_entries(pid)), report)

    _find_affected(repo, roots, graph, report)
    return report


def _check_pack_size(repo: Repository, name: str, raw: bytes) -> Problem | None:
    """A problem when the pack's size is not what its entries (``raw``, packed) imply."""
    try:
        size = repo.storage.size(name)
    except OSError as exc:
        return Problem("damaged_packs", name, f"pack {name} cannot be read: {exc}", pack=name,
                       blobs={e.id for e in unpack_entries(raw)})
    want = expected_pack_size(PackEntry(*t) for t in _ENTRY.iter_unpack(raw))
    if size == want:
        return None
    entries = unpack_entries(raw)
    detail = f"pack {name} is {size} bytes, the index implies {want}"
    try:
        header = read_header(repo.crypto, repo.storage, name, size)
    except (DamagedObjectError, OSError, struct.error) as exc:
        detail += f"; its header is unreadable ({exc})"
    else:
        same = "equals" if header == entries else "differs from"
        detail += f"; its header is readable and {same} the index"
    return Problem("damaged_packs", name, detail, pack=name, blobs={e.id for e in entries})


def _walk_unique(repo: Repository, root: bytes, graph: dict[bytes, list[bytes]],
                 referenced: BlobIds, failed: set[bytes], report: VerifyReport) -> None:
    """Load and parse every tree reachable from ``root`` not seen yet; record which
    trees it holds (the blobs are only counted: _find_affected reads trees again when
    there is damage to trace)."""
    referenced.add(root)
    stack = [root]
    while stack:
        tid = stack.pop()
        if tid in graph or tid in failed or tid not in repo.index:
            continue  # seen, or a missing blob (reported with the other missing ones)
        try:
            nodes = parse_tree(repo.load_blob(tid))
        except (DamagedObjectError, OSError) as exc:
            failed.add(tid)
            report.damaged_trees.append(Problem(
                "damaged_trees", tid.hex(), f"tree {tid.hex()} cannot be loaded: {exc}",
                blob=tid.hex(), blobs={tid}))
            continue
        except (ValueError, TypeError) as exc:
            failed.add(tid)
            report.damaged_trees.append(Problem(
                "damaged_trees", tid.hex(), f"tree {tid.hex()} cannot be parsed: {exc}",
                blob=tid.hex(), blobs={tid}))
            continue
        subtrees = [n.subtree for n in nodes if n.subtree is not None]
        graph[tid] = subtrees
        for n in nodes:
            for b in n.content:
                referenced.add(b)
        for sub in subtrees:
            referenced.add(sub)
        stack.extend(subtrees)


def _read_pack(repo: Repository, pid: bytes, name: str, entries: list[PackEntry],
               report: VerifyReport) -> None:
    try:
        data = repo.storage.read(name)
    except OSError as exc:
        report.damaged_packs.append(Problem("damaged_packs", name,
                                            f"pack {name} cannot be read: {exc}", pack=name,
                                            blobs={e.id for e in entries}))
        return
    report.packs_read += 1
    report.bytes_read += len(data)
    if blake3.blake3(data).digest() != pid:
        report.damaged_packs.append(Problem(
            "damaged_packs", name, f"pack {name}: content does not match its name "
            "(storage damage)", pack=name))
    header_problem = None
    try:
        header = whole_pack_header(repo.crypto, data, name)
        if header != entries:
            header_problem = f"pack {name}: its header differs from the index"
    except DamagedObjectError as exc:
        header_problem = f"pack {name}: header unreadable: {exc}"
    if header_problem is not None:
        report.damaged_packs.append(Problem("damaged_packs", name, header_problem, pack=name))
    for e, _sealed, damage in check_blobs(repo.crypto, data, entries, name):
        report.blobs_read += 1
        if damage is not None:
            report.damaged_blobs.append(Problem(
                "damaged_blobs", e.id.hex(), f"damaged blob {e.id.hex()} in pack {name}: {damage}",
                pack=name, blob=e.id.hex(), blobs={e.id}))


def _find_affected(repo: Repository, roots: list[tuple[str, bytes]],
                   graph: dict[bytes, list[bytes]], report: VerifyReport) -> None:
    """Fill ``affected`` of every problem about blobs with the files that need them."""
    problems = [p for p in report.errors if p.blobs]
    wanted: set[bytes] = set().union(*(p.blobs for p in problems)) if problems else set()
    if not wanted:
        return
    bad = _trees_leading_to(graph, wanted, _trees_holding(repo, graph, wanted))
    found: dict[bytes, list[tuple[str, str]]] = {}
    counts: dict[bytes, int] = {}

    def hit(bid: bytes, sid: str, path: str) -> None:
        counts[bid] = counts.get(bid, 0) + 1
        lst = found.setdefault(bid, [])
        if len(lst) < MAX_AFFECTED:
            lst.append((sid[:8], path))

    for sid, root in roots:
        if root in wanted:
            hit(root, sid, "/")
        if root not in bad:
            continue
        stack = [(root, "", 0)]
        while stack:
            tid, prefix, depth = stack.pop()
            if depth > _MAX_DEPTH:
                continue  # only a forged cycle gets here
            try:
                nodes = parse_tree(repo.load_blob(tid))
            except (DamagedObjectError, OSError, ValueError, TypeError):
                continue  # reported as a damaged tree already
            for n in nodes:
                path = f"{prefix}/{n.name}"
                for b in n.content:
                    if b in wanted:
                        hit(b, sid, path)
                if n.subtree is not None:
                    if n.subtree in wanted:
                        hit(n.subtree, sid, path)
                    if n.subtree in bad:
                        stack.append((n.subtree, path, depth + 1))
    for p in problems:
        seen: set[tuple[str, str]] = set()
        total = 0
        for b in sorted(p.blobs):
            total += counts.get(b, 0)
            for item in found.get(b, []):
                if item not in seen and len(p.affected) < MAX_AFFECTED:
                    seen.add(item)
                    p.affected.append(item)
        p.affected.sort()
        p.affected_total = max(total, len(p.affected))


def _trees_holding(repo: Repository, graph: dict[bytes, list[bytes]],
                   wanted: set[bytes]) -> set[bytes]:
    """The trees with a file made of a blob in ``wanted`` (each tree read again: the walk
    kept no list of blobs, which for every tree would have held every blob id)."""
    out: set[bytes] = set()
    for tid in graph:
        try:
            nodes = parse_tree(repo.load_blob(tid))
        except (DamagedObjectError, OSError, ValueError, TypeError):
            continue  # read before: only damage since then gets here
        if any(b in wanted for n in nodes for b in n.content):
            out.add(tid)
    return out


def _trees_leading_to(graph: dict[bytes, list[bytes]], wanted: set[bytes],
                      holding: set[bytes]) -> set[bytes]:
    """Trees from which a blob in ``wanted`` is reachable (iterative post-order), given
    the trees ``holding`` one directly."""
    bad: set[bytes] = set()
    done: set[bytes] = set()
    visiting: set[bytes] = set()  # guards against a (forged) cycle
    for start in graph:
        if start in done:
            continue
        stack: list[tuple[bytes, bool]] = [(start, False)]
        while stack:
            tid, expanded = stack.pop()
            if tid in done:
                continue
            subtrees = graph[tid]
            if not expanded:
                if tid in visiting:
                    continue
                visiting.add(tid)
                stack.append((tid, True))
                stack.extend((s, False) for s in subtrees if s in graph and s not in done)
                continue
            done.add(tid)
            if tid in holding or any(s in wanted or s in bad for s in subtrees):
                bad.add(tid)
    return bad
