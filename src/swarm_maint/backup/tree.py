"""Tree blobs: one directory's entries as canonical JSON.

    tree := {"nodes": [node, ...]}   nodes sorted by os.fsencode(name), names unique
    node := {"name", "type": file|dir|symlink|fifo, "mode", "uid", "gid", "mtime_ns",
             "size", "inode", "dev", "nlink",
             "content": [hex blob id, ...] (files), "subtree": hex tree id (dirs),
             "target": str (symlinks)}

Names are ``os.fsdecode`` of the entry name; bytes that are not UTF-8 survive as
surrogate escapes (JSON writes them as ``\\udcXX``). ``decode_tree`` checks the structure
(types, sortedness) but not whether a name is safe to create: restore does that.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import DamagedObjectError
from .packs import TREE
from .repository import Repository

__all__ = [
    "NODE_TYPES",
    "Node",
    "decode_tree",
    "encode_tree",
    "is_safe_name",
    "join_path",
    "load_tree",
    "save_tree",
    "walk_snapshot",
]

Node = dict[str, Any]

NODE_TYPES = ("file", "dir", "symlink", "fifo")
_INT_FIELDS = ("mode", "uid", "gid", "mtime_ns", "size", "inode", "dev", "nlink")
_HEX_ID = re.compile(r"[0-9a-f]{64}")


def encode_tree(nodes: Iterable[Node]) -> bytes:
    """Canonical bytes of a tree; nodes are sorted here by their encoded name."""
    ordered = sorted(nodes, key=lambda n: os.fsencode(n["name"]))
    return json.dumps({"nodes": ordered}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def _bad(what: str, why: str) -> DamagedObjectError:
    return DamagedObjectError(f"{what}: malformed tree: {why}", what)


def _check_node(node: object, what: str, i: int) -> Node:
    if not isinstance(node, dict):
        raise _bad(what, f"node {i} is not an object")
    name = node.get("name")
    if not isinstance(name, str):
        raise _bad(what, f"node {i}: name is not a string")
    kind = node.get("type")
    if kind not in NODE_TYPES:
        raise _bad(what, f"node {i} ({name!r}): unknown type {kind!r}")
    for field in _INT_FIELDS:
        v = node.get(field)
        if not isinstance(v, int) or isinstance(v, bool):
            raise _bad(what, f"node {i} ({name!r}): {field} is not an integer")
    if not 0 <= node["mode"] <= 0o7777 or node["size"] < 0:
        raise _bad(what, f"node {i} ({name!r}): mode or size out of range")
    if kind == "file":
        content = node.get("content")
        if not isinstance(content, list) or not all(
            isinstance(c, str) and _HEX_ID.fullmatch(c) for c in content
        ):
            raise _bad(what, f"node {i} ({name!r}): content is not a list of blob ids")
    elif kind == "dir":
        sub = node.get("subtree")
        if not isinstance(sub, str) or not _HEX_ID.fullmatch(sub):
            raise _bad(what, f"node {i} ({name!r}): subtree is not a tree id")
    elif kind == "symlink" and not isinstance(node.get("target"), str):
        raise _bad(what, f"node {i} ({name!r}): symlink target is not a string")
    return node


def decode_tree(data: bytes, what: str = "tree") -> list[Node]:
    """The nodes of a tree blob; DamagedObjectError when it is not a well-formed tree."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(what, f"not JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("nodes"), list):
        raise _bad(what, "no node list")
    nodes = [_check_node(n, what, i) for i, n in enumerate(obj["nodes"])]
    prev: bytes | None = None
    for n in nodes:
        try:
            key = os.fsencode(n["name"])
        except UnicodeEncodeError:
            raise _bad(what, f"name {n['name']!r} cannot be encoded") from None
        if prev is not None and key <= prev:
            raise _bad(what, f"names not sorted or not unique at {n['name']!r}")
        prev = key
    return nodes


def is_safe_name(name: str) -> bool:
    """Whether ``name`` is one plain path component (what restore is willing to create)."""
    return name not in ("", ".", "..") and "/" not in name and "\x00" not in name


def join_path(prefix: str, name: str) -> str:
    if not prefix:
        return name
    return prefix.rstrip("/") + "/" + name


def save_tree(repo: Repository, nodes: Iterable[Node]) -> tuple[str, int]:
    """Store a tree blob; (hex id, sealed bytes added)."""
    bid, added = repo.add_blob(TREE, encode_tree(nodes))
    return bid.hex(), added


def load_tree(repo: Repository, tree_id: str) -> list[Node]:
    """Load, verify and decode one tree blob."""
    if not isinstance(tree_id, str) or not _HEX_ID.fullmatch(tree_id):
        raise DamagedObjectError(f"invalid tree id {tree_id!r}", str(tree_id))
    data = repo.load_blob(bytes.fromhex(tree_id))
    return decode_tree(data, f"tree {tree_id[:16]}")


def walk_snapshot(repo: Repository, tree_id: str, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """Every node below ``tree_id``, depth first (a directory before its content).

    Paths are ``prefix``-joined names ("data/models/x" for prefix "", "/data/..." for "/").
    """
    stack: list[Iterator[Node]] = [iter(load_tree(repo, tree_id))]
    prefixes = [prefix]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
            prefixes.pop()
            continue
        path = join_path(prefixes[-1], node["name"])
        yield path, node
        if node["type"] == "dir":
            stack.append(iter(load_tree(repo, node["subtree"])))
            prefixes.append(path)
