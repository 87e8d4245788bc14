"""verify() on a real LocalStorage repository, damaged on purpose in each way it checks."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from swarm_maint.backup.packs import DATA, TREE, PackWriter, blob_aad, pack_name
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.storage.local import LocalStorage
from swarm_maint.backup.verify import VerifyReport, parse_tree, verify
from swarm_maint.errors import UsageError

PASSWORD = "correct horse battery staple"
CHUNK = 4096

Files = dict[str, Any]  # name -> bytes (a file) or a nested Files (a directory)


# -- helpers shared with test_prune.py ---------------------------------------------------


def new_repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStorage(tmp_path / "repo"), PASSWORD)


def reopen(repo: Repository) -> Repository:
    assert isinstance(repo.storage, LocalStorage)
    return Repository.open(LocalStorage(repo.storage.root), PASSWORD)


def _add_data(repo: Repository, files: Files) -> dict[int, list[bytes]]:
    ids: dict[int, list[bytes]] = {}
    for v in files.values():
        if isinstance(v, dict):
            ids.update(_add_data(repo, v))
        else:
            ids[id(v)] = [repo.add_blob(DATA, v[i:i + CHUNK])[0]
                          for i in range(0, len(v), CHUNK)]
    return ids


def _add_tree(repo: Repository, files: Files, ids: dict[int, list[bytes]]) -> bytes:
    nodes: list[dict[str, Any]] = []
    for name, v in sorted(files.items()):
        if isinstance(v, dict):
            nodes.append({"name": name, "type": "dir", "mode": 0o755,
                          "subtree": _add_tree(repo, v, ids).hex()})
        else:
            nodes.append({"name": name, "type": "file", "mode": 0o644, "size": len(v),
                          "content": [b.hex() for b in ids[id(v)]]})
    return repo.add_blob(TREE, json.dumps({"nodes": nodes}).encode())[0]


def add_snapshot(repo: Repository, files: Files, *, when: float | None = None,
                 hostname: str = "node1", tags: tuple[str, ...] = ()) -> str:
    """Data blobs in one pack, trees in another, then the snapshot object."""
    ids = _add_data(repo, files)
    repo.flush()
    root = _add_tree(repo, files, ids)
    repo.flush()
    return repo.save_object("snapshots", {
        "version": 1, "time": time.time() if when is None else when, "hostname": hostname,
        "username": "root", "paths": ["/data"], "tags": list(tags), "tree": root.hex(),
        "parent": None, "excludes": [], "partial": False, "errors": [], "summary": {},
        "program": "swarm-maint test",
    })


def file_blobs(repo: Repository, sid: str, path: str) -> list[bytes]:
    """The content blob ids of the file at ``path`` ("/a/b") in snapshot ``sid``."""
    tid = bytes.fromhex(repo.load_object("snapshots", sid)["tree"])
    *dirs, last = path.strip("/").split("/")
    for d in dirs:
        node = next(n for n in parse_tree(repo.load_blob(tid)) if n.name == d)
        assert node.subtree is not None
        tid = node.subtree
    node = next(n for n in parse_tree(repo.load_blob(tid)) if n.name == last)
    return list(node.content)


def all_snapshot_blobs(repo: Repository, sid: str) -> list[bytes]:
    out = []
    stack = [bytes.fromhex(repo.load_object("snapshots", sid)["tree"])]
    while stack:
        tid = stack.pop()
        out.append(tid)
        for n in parse_tree(repo.load_blob(tid)):
            out.extend(n.content)
            if n.subtree is not None:
                stack.append(n.subtree)
    return out


def pack_path(repo: Repository, blob_id: bytes) -> Path:
    loc = repo.index.get(blob_id)
    assert loc is not None
    assert isinstance(repo.storage, LocalStorage)
    return repo.storage.root / pack_name(loc.pack_id)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def write_orphan_pack(repo: Repository, n: int = 3) -> str:
    """A valid pack that no index names (as a crashed backup leaves one)."""
    w = PackWriter(repo.crypto)
    for _ in range(n):
        data = os.urandom(1000)
        bid = repo.blob_id(data)
        w.add(DATA, bid, 0, repo.crypto.seal(data, blob_aad(DATA, bid)), len(data))
    pid, raw = w.finish()
    repo.storage.write(pack_name(pid), raw)
    return pack_name(pid)


def sample_files() -> Files:
    rnd = random.Random(7)
    return {
        "model.bin": rnd.randbytes(3 * CHUNK + 100),
        "config.json": b'{"lr": 0.001}',
        "sub": {"weights.pt": rnd.randbytes(2 * CHUNK), "empty": b""},
    }


# -- tests ----------------------------------------------------------------------------------


def test_clean_repository_is_ok(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    add_snapshot(repo, sample_files())
    add_snapshot(repo, {**sample_files(), "new.txt": b"hello"})
    repo = reopen(repo)
    for report in (verify(repo), verify(repo, read_data=True)):
        assert report.ok, report.lines()
        assert not report.warnings
        assert report.snapshots == 2
        assert report.trees >= 3
        assert report.lines()[-1] == "no errors were found"
        json.dumps(report.to_dict())
    full = verify(repo, read_data=True)
    assert full.packs_read == full.packs == 4
    assert full.blobs_read > 0


def test_missing_pack_names_snapshot_and_path(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    path = pack_path(repo, file_blobs(repo, sid, "/model.bin")[0])
    path.unlink()
    report = verify(reopen(repo))
    assert not report.ok
    [problem] = report.missing_packs
    assert problem.name == pack_name(bytes.fromhex(path.name))
    assert (sid[:8], "/model.bin") in problem.affected
    assert (sid[:8], "/sub/weights.pt") in problem.affected
    text = "\n".join(report.lines())
    assert f"needed by snapshot {sid[:8]} path /model.bin" in text
    assert report.to_dict()["ok"] is False


def test_flipped_byte_found_only_with_read_data(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    blob = file_blobs(repo, sid, "/sub/weights.pt")[1]
    loc = repo.index.get(blob)
    assert loc is not None
    path = pack_path(repo, blob)
    flip_byte(path, loc.entry.offset + loc.entry.length // 2)
    repo = reopen(repo)

    assert verify(repo).ok  # same size, header intact: structure cannot tell

    report = verify(repo, read_data=True)
    assert not report.ok
    [damaged] = report.damaged_blobs
    assert damaged.blob == blob.hex()
    assert damaged.pack == pack_name(loc.pack_id)
    assert damaged.affected == [(sid[:8], "/sub/weights.pt")]
    assert [p.name for p in report.damaged_packs] == [pack_name(loc.pack_id)]
    text = "\n".join(report.lines())
    assert blob.hex() in text
    assert "path /sub/weights.pt" in text


def test_damaged_index_file(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    add_snapshot(repo, sample_files())
    assert isinstance(repo.storage, LocalStorage)
    name = repo.storage.list("index/")[0]
    flip_byte(repo.storage.root / name, 20)
    report = verify(reopen(repo))
    assert not report.ok
    assert [p.name for p in report.damaged_indexes] == [name]
    assert any(name in line for line in report.lines())


def test_truncated_pack(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    path = pack_path(repo, file_blobs(repo, sid, "/model.bin")[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = verify(reopen(repo))
    assert not report.ok
    [problem] = report.damaged_packs
    assert problem.pack == f"packs/{path.name[:2]}/{path.name}"
    assert "bytes, the index implies" in problem.message
    assert "header is unreadable" in problem.message
    assert (sid[:8], "/model.bin") in problem.affected


def test_unreferenced_pack_is_a_warning(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    add_snapshot(repo, sample_files())
    orphan = write_orphan_pack(repo)
    report = verify(reopen(repo), read_data=True)
    assert report.ok
    assert [p.name for p in report.unreferenced_packs] == [orphan]
    assert report.lines()[-1] == "no errors were found (1 warning(s))"
    assert report.to_dict()["warnings"] == 1


def test_missing_blob_and_damaged_objects(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    ghost = bytes(range(32))
    nodes = [{"name": "ghost.bin", "type": "file", "content": [ghost.hex()]},
             {"name": "bad", "type": "dir",
              "subtree": repo.add_blob(TREE, b"not json")[0].hex()}]
    root = repo.add_blob(TREE, json.dumps({"nodes": nodes}).encode())[0]
    repo.flush()
    sid = repo.save_object("snapshots", {"version": 1, "time": 1.0, "tree": root.hex()})
    broken = add_snapshot(repo, sample_files())
    assert isinstance(repo.storage, LocalStorage)
    flip_byte(repo.storage.root / f"snapshots/{broken}", 30)

    report = verify(reopen(repo))
    assert not report.ok
    [missing] = report.missing_blobs
    assert missing.blob == ghost.hex()
    assert missing.affected == [(sid[:8], "/ghost.bin")]
    [tree] = report.damaged_trees
    assert "cannot be parsed" in tree.message
    assert tree.affected == [(sid[:8], "/bad")]
    assert [p.name for p in report.damaged_snapshots] == [f"snapshots/{broken}"]
    assert any(f"missing blob {ghost.hex()}" in line for line in report.lines())


def test_subset_100_equals_read_data(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    add_snapshot(repo, {"other": b"x" * 10000})
    blob = file_blobs(repo, sid, "/model.bin")[0]
    loc = repo.index.get(blob)
    assert loc is not None
    flip_byte(pack_path(repo, blob), loc.entry.offset + 5)
    repo = reopen(repo)
    full = verify(repo, read_data=True).to_dict()
    subset = verify(repo, read_data_subset=100).to_dict()
    assert full == subset
    assert full["ok"] is False


def test_subset_reads_a_share_of_the_packs(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    for i in range(2):
        add_snapshot(repo, {f"f{i}": os.urandom(5000)})
    repo = reopen(repo)
    seen: list[tuple[str, int, int]] = []
    report = verify(repo, read_data_subset=50, rng=random.Random(1),
                    progress=lambda *a: seen.append(a))
    assert report.ok
    assert report.packs == 4
    assert report.packs_read == 2
    assert report.read_data_percent == 50
    assert any(phase == "read-data" for phase, _, _ in seen)
    assert verify(repo, read_data_subset=0.1).packs_read == 1
    for bad in (0, -1, 100.5):
        with pytest.raises(UsageError):
            verify(repo, read_data_subset=bad)


def test_parse_tree_rejects_malformed() -> None:
    for bad in (b"[]", b'{"nodes": 1}', b'{"nodes": [{"name": "a/b", "type": "file"}]}',
                b'{"nodes": [{"name": "d", "type": "dir", "subtree": "zz"}]}',
                b'{"nodes": [{"name": "f", "type": "file", "content": ["00"]}]}'):
        with pytest.raises(ValueError):  # noqa: PT011
            parse_tree(bad)
    nodes = parse_tree(json.dumps({"nodes": [
        {"name": "l", "type": "symlink", "target": "x"},
        {"name": "f", "type": "file", "content": ["ab" * 32]}]}).encode())
    assert nodes[1].content == (bytes([0xAB]) * 32,)


def test_report_type() -> None:
    assert VerifyReport().ok
