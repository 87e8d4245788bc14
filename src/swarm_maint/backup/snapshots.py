"""Snapshots: listing, resolving references ("latest", id prefixes), listing files, diff."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .errors import DamagedObjectError, RepositoryError, SnapshotSelectorError
from .repository import Repository
from .tree import Node, join_path, load_tree, walk_snapshot

__all__ = ["diff_snapshots", "find_parent", "find_snapshot", "list_files", "list_snapshots",
           "resolve_snapshot_id", "with_parent"]

_HEX = re.compile(r"[0-9a-f]+")
_COMPARED = ("type", "content", "mode", "mtime_ns", "size", "target")


def list_snapshots(repo: Repository,
                   damaged: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every snapshot, oldest first. A damaged snapshot object raises DamagedObjectError,
    unless ``damaged`` is given: then its id is appended there and it is skipped."""
    out: list[tuple[str, dict[str, Any]]] = []
    for sid in repo.list_objects("snapshots"):
        try:
            obj = repo.load_object("snapshots", sid)
            if not isinstance(obj, dict) or not isinstance(obj.get("tree"), str):
                raise DamagedObjectError(f"snapshots/{sid}: not a snapshot", f"snapshots/{sid}")
        except (DamagedObjectError, ValueError, FileNotFoundError):
            if damaged is None:
                raise
            damaged.append(sid)
            continue
        out.append((sid, obj))
    out.sort(key=lambda s: (float(s[1].get("time", 0)), s[0]))
    return out


def find_parent(repo: Repository, hostname: str, paths: list[str]) -> str | None:
    """The id of the latest readable snapshot taken on ``hostname`` of exactly ``paths``
    (the snapshot a new backup of them follows), or None. Damaged snapshots are passed
    over: the parent is informational, and a backup must not fail for want of one."""
    for sid, obj in reversed(list_snapshots(repo, damaged=[])):  # newest first
        if obj.get("hostname") == hostname and obj.get("paths") == paths:
            return str(sid)
    return None


def with_parent(repo: Repository, ref: str) -> tuple[str, str]:
    """(parent id, id) of the snapshot ``ref`` names, for a diff against its parent;
    SnapshotSelectorError when it has none, or its parent was forgotten."""
    sid, obj = find_snapshot(repo, ref)
    parent = obj.get("parent")
    if not isinstance(parent, str) or not parent:
        raise SnapshotSelectorError(f"snapshot {sid[:16]} has no parent (the first backup of "
                                    "its paths from its host): name two snapshots")
    if parent not in repo.list_objects("snapshots"):
        raise SnapshotSelectorError(f"the parent of snapshot {sid[:16]}, {parent[:16]}, is no "
                                    "longer in the repository (forgotten): name two snapshots")
    return str(parent), sid


def find_snapshot(repo: Repository, ref: str) -> tuple[str, dict[str, Any]]:
    """Resolve "latest", a full id or a unique id prefix to (id, snapshot object)."""
    ref = ref.strip().lower()
    if ref == "latest":
        damaged: list[str] = []
        snaps = list_snapshots(repo, damaged=damaged)
        if not snaps:
            if damaged:
                raise DamagedObjectError(
                    f"the repository has no readable snapshot ({len(damaged)} damaged: "
                    f"{', '.join(d[:16] for d in damaged)})", f"snapshots/{damaged[0]}")
            raise RepositoryError("the repository has no snapshots")
        return snaps[-1]
    sid = resolve_snapshot_id(repo, ref, accepted="a snapshot id (hex) or 'latest'")
    return sid, repo.load_object("snapshots", sid)


def resolve_snapshot_id(repo: Repository, ref: str, *,
                        accepted: str = "a snapshot id (hex digits)") -> str:
    """The full id of the snapshot a full id or unique id prefix names, without reading
    it (so a damaged snapshot can be named too)."""
    ref = ref.strip().lower()
    if not ref or not _HEX.fullmatch(ref):
        raise SnapshotSelectorError(f"{ref!r} is not {accepted}")
    matches = [s for s in repo.list_objects("snapshots") if s.startswith(ref)]
    if not matches:
        raise SnapshotSelectorError(f"no snapshot {ref!r}")
    if len(matches) > 1:
        raise SnapshotSelectorError(f"snapshot prefix {ref!r} is ambiguous "
                                    f"({len(matches)} snapshots match)")
    return matches[0]


def list_files(repo: Repository, snapshot_ref: str) -> Iterator[tuple[str, Node]]:
    """(absolute path in the snapshot, node) for every node, depth first."""
    _sid, obj = find_snapshot(repo, snapshot_ref)
    yield from walk_snapshot(repo, obj["tree"], "/")


def _differs(a: Node, b: Node) -> bool:
    return any(a.get(k) != b.get(k) for k in _COMPARED)


def diff_snapshots(repo: Repository, a: str, b: str) -> list[tuple[str, str]]:
    """[(status, path)]: "+" only in ``b``, "-" only in ``a``, "M" changed (type, content,
    mode, mtime, size or symlink target). Identical subtrees are not descended into."""
    _, sa = find_snapshot(repo, a)
    _, sb = find_snapshot(repo, b)
    out: list[tuple[str, str]] = []
    stack: list[tuple[str | None, str | None, str]] = [(sa["tree"], sb["tree"], "/")]
    while stack:
        ta, tb, prefix = stack.pop()
        if ta == tb:
            continue
        na = {n["name"]: n for n in load_tree(repo, ta)} if ta else {}
        nb = {n["name"]: n for n in load_tree(repo, tb)} if tb else {}
        for name in sorted(na.keys() | nb.keys(), key=lambda s: s.encode("utf-8",
                                                                           "surrogateescape")):
            path = join_path(prefix, name)
            x, y = na.get(name), nb.get(name)
            if x is None:
                assert y is not None
                out.append(("+", path))
                _all_below(repo, y, path, "+", out)
            elif y is None:
                out.append(("-", path))
                _all_below(repo, x, path, "-", out)
            elif x["type"] == "dir" and y["type"] == "dir":
                if _differs(x, y):
                    out.append(("M", path))
                stack.append((x["subtree"], y["subtree"], path))
            elif _differs(x, y):
                out.append(("M", path))
                if x["type"] == "dir":
                    _all_below(repo, x, path, "-", out)
                if y["type"] == "dir":
                    _all_below(repo, y, path, "+", out)
    out.sort(key=lambda r: r[1].encode("utf-8", "surrogateescape"))
    return out


def _all_below(repo: Repository, node: Node, path: str, status: str,
               out: list[tuple[str, str]]) -> None:
    if node["type"] == "dir":
        out.extend((status, p) for p, _n in walk_snapshot(repo, node["subtree"], path))
