"""Backup and restore of real directory trees: content, metadata, caches, errors, safety."""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swarm_maint.backup import backup as backup_module
from swarm_maint.backup.backup import NullProgress, is_excluded, normalize_paths, run_backup
from swarm_maint.backup.errors import DamagedObjectError, RepositoryError, SnapshotSelectorError
from swarm_maint.backup.files_cache import CacheEntry, FilesCache
from swarm_maint.backup.packs import DATA, TREE, pack_name
from swarm_maint.backup.repository import ChunkerParams, Repository
from swarm_maint.backup.restore import restore
from swarm_maint.backup.scan import Entry, Scan
from swarm_maint.backup.snapshots import (
    diff_snapshots,
    find_snapshot,
    list_files,
    list_snapshots,
    with_parent,
)
from swarm_maint.backup.storage import LocalStorage
from swarm_maint.backup.tree import encode_tree, load_tree, walk_snapshot

PAST = 1_600_000_000_000_000_000  # mtimes older than the files cache's racy window
NL_NAME = "new\nline"
BAD_NAME = os.fsdecode(b"bad\xff\xfename")


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStorage(tmp_path / "repo"), "pw",
                           ChunkerParams(1024, 4096, 16384))


def reopen(repo: Repository) -> Repository:
    return Repository.open(repo.storage, "pw")


def under(target: Path, path: Path) -> Path:
    """Where ``path`` lands when restored under ``target``."""
    return Path(os.fsdecode(os.fsencode(target) + os.fsencode(path)))


def make_tree(src: Path) -> None:
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    (src / "empty").write_bytes(b"")
    (src / "emptydir").mkdir()
    nested = src / "a" / "b" / "c"
    nested.mkdir(parents=True)
    (nested / "deep.txt").write_text("deep\n" * 1000)
    (src / "a" / "mid.txt").write_text("middle")
    (src / "secret").write_bytes(b"top secret")
    os.chmod(src / "secret", 0o600)
    (src / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(src / "tool", 0o755)
    (src / "suid").write_bytes(b"suid")
    os.chmod(src / "suid", 0o4755)
    os.symlink("a/mid.txt", src / "rel-link")
    os.symlink("/etc/hostname", src / "abs-link")
    os.symlink("does/not/exist", src / "dangling")
    (src / "hard1").write_bytes(b"linked content" * 100)
    os.link(src / "hard1", src / "hard2")
    os.link(src / "hard1", src / "a" / "hard3")
    (src / NL_NAME).write_bytes(b"newline name")
    with open(os.path.join(os.fsencode(src), os.fsencode(BAD_NAME)), "wb") as f:
        f.write(b"not utf-8 name")
    os.mkfifo(src / "fifo", 0o640)
    if os.geteuid() == 0:
        os.chown(src / "secret", 1234, 5678)
        os.lchown(src / "rel-link", 4321, 8765)
    os.chmod(src / "emptydir", 0o750)
    set_times(src)


def set_times(root: Path) -> None:
    """Distinct, old mtimes everywhere (directories last so their own stay set)."""
    i = 0
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root), topdown=False):
        for name in filenames + dirnames:
            i += 1
            t = PAST + i * 1_000_003
            os.utime(os.path.join(dirpath, name), ns=(t, t), follow_symlinks=False)
    os.utime(root, ns=(PAST, PAST))


def describe(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Everything restore must reproduce, keyed by path relative to ``root``."""
    base = os.fsencode(root)
    out: dict[bytes, tuple[Any, ...]] = {}
    s = os.lstat(base)
    out[b"."] = ("d", s.st_mode, s.st_mtime_ns, s.st_uid, s.st_gid)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, base)
            s = os.lstat(p)
            meta = (s.st_mtime_ns, s.st_uid, s.st_gid)
            if stat.S_ISLNK(s.st_mode):
                out[rel] = ("l", os.readlink(p), *meta)
            elif stat.S_ISDIR(s.st_mode):
                out[rel] = ("d", s.st_mode, *meta)
            elif stat.S_ISFIFO(s.st_mode):
                out[rel] = ("p", s.st_mode, *meta)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("f", s.st_mode, s.st_size, *meta, f.read())
    return out


def snapshot_paths(repo: Repository, ref: str) -> set[str]:
    return {p for p, _n in list_files(repo, ref)}


# -- round trip -----------------------------------------------------------------------------

def test_backup_restore_round_trip(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    res = run_backup(repo, [src], tags=["t1"], workers=2)
    assert not res.partial, res.errors
    assert res.files == 12 and res.files_read == 10  # hard links are read once
    assert res.bytes == sum(s[2] for s in describe(src).values() if s[0] == "f")
    assert res.added_bytes > 0

    obj = repo.load_object("snapshots", res.snapshot_id)
    assert obj["paths"] == [str(src)] and obj["tags"] == ["t1"] and obj["version"] == 1
    assert obj["partial"] is False and obj["errors"] == []
    assert obj["summary"]["files"] == 12 and obj["program"].startswith("swarm-maint ")
    # root tree holds only the directories leading to the backed-up path
    root = load_tree(repo, obj["tree"])
    assert [n["name"] for n in root] == [src.parts[1]]

    out = tmp_path / "out"
    rr = restore(reopen(repo), res.snapshot_id[:10], out, workers=2)
    assert rr.errors == []
    assert rr.files == 16  # 12 files, 3 symlinks, 1 fifo
    dst = under(out, src)
    assert describe(dst) == describe(src)
    h1, h2, h3 = (os.lstat(dst / n) for n in ("hard1", "hard2", "a/hard3"))
    assert h1.st_ino == h2.st_ino == h3.st_ino and h1.st_nlink == 3
    assert os.lstat(dst / "big.bin").st_ino != h1.st_ino
    # intermediate directories carry their real metadata
    assert os.lstat(under(out, src.parent)).st_mode == os.lstat(src.parent).st_mode
    assert not [n for n in os.listdir(dst) if n.startswith(".smr-")]


def test_restore_counts(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 100)
    os.symlink("f", src / "l")
    (src / "d").mkdir()
    res = run_backup(repo, [src])
    rr = restore(repo, res.snapshot_id, tmp_path / "out")
    assert (rr.files, rr.bytes, rr.errors) == (2, 100, [])
    assert rr.dirs == len(src.parts)  # intermediates + src + d


def test_restore_into_existing_target_replaces_files(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"new")
    res = run_backup(repo, [src])
    out = tmp_path / "out"
    dst = under(out, src)
    dst.mkdir(parents=True)
    (dst / "f").write_bytes(b"old content that is longer")
    assert restore(repo, res.snapshot_id, out).errors == []
    assert (dst / "f").read_bytes() == b"new"


# -- files cache and dedup ---------------------------------------------------------------

def test_files_cache_second_backup_reads_nothing(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    with FilesCache(tmp_path / "state" / "cache.db") as cache:
        first = run_backup(repo, [src], files_cache=cache)
        assert first.files_read == 10 and len(cache) == 10
        second = run_backup(repo, [src], files_cache=cache, parent=first.snapshot_id)
        assert second.files_read == 0 and second.bytes_read == 0
        assert second.added_bytes == 0
        assert second.bytes == first.bytes
        assert repo.load_object("snapshots", second.snapshot_id)["parent"] == first.snapshot_id
        assert diff_snapshots(repo, first.snapshot_id, second.snapshot_id) == []

        (src / "a" / "mid.txt").write_text("changed!")
        os.utime(src / "a" / "mid.txt", ns=(PAST, PAST))
        third = run_backup(repo, [src], files_cache=cache)
        assert third.files_read == 1
        out = tmp_path / "out"
        assert restore(repo, third.snapshot_id, out).errors == []
        assert (under(out, src) / "a" / "mid.txt").read_text() == "changed!"

    # a fresh repository object (no cache): everything is read, nothing is added
    fourth = run_backup(reopen(repo), [src])
    assert fourth.files_read == 10
    assert fourth.added_bytes < 4096  # only trees of the parents (tmp_path got "out")


def test_files_cache_does_not_vouch_for_missing_blobs(tmp_path: Path) -> None:
    with FilesCache(tmp_path / "c.db") as cache:
        assert cache._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        st = os.stat(tmp_path)
        ids = (b"\x01" * 32, b"\x02" * 32)
        cache.update([(str(tmp_path), CacheEntry(st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                                 st.st_ino, ids))], now=1.0)
        assert cache.lookup(str(tmp_path), st, set(ids)) == ids
        assert cache.lookup(str(tmp_path), st, {ids[0]}) is None
        os.utime(tmp_path, ns=(1, 1))
        assert cache.lookup(str(tmp_path), os.stat(tmp_path), set(ids)) is None
        assert cache.lookup("/nope", st, set(ids)) is None


def test_files_cache_damaged_rows_are_misses(tmp_path: Path) -> None:
    """Rows of the wrong type or length (a damaged or foreign database) are read as
    changed files: the file is read again, never trusted, never an error."""
    st = os.stat(tmp_path)
    good = b"\x01" * 32
    rows = {
        "text-content": (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, "x" * 32),
        "short-content": (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, good[:31]),
        "text-size": ("large", st.st_mtime_ns, st.st_ctime_ns, st.st_ino, good),
        "other-inode": (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino + 1, good),
        "two-ids": (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, good * 2),
    }
    with FilesCache(tmp_path / "c.db") as cache:
        cache._db.executemany(
            "INSERT INTO files (path, size, mtime_ns, ctime_ns, inode, content, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, 0)",
            [(os.fsencode(name), *row) for name, row in rows.items()])
        names = list(rows)
        found = cache.lookup_many([(name, st) for name in names], {good})
    assert dict(zip(names, found, strict=True)) == {
        "text-content": None, "short-content": None, "text-size": None,
        "other-inode": None, "two-ids": (good, good)}


def test_files_cache_written_only_for_saved_snapshots(repo: Repository,
                                                      tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    os.utime(src / "f", ns=(PAST, PAST))

    def boom(kind: str, obj: dict[str, Any]) -> str:
        raise RuntimeError("storage died")

    repo.save_object = boom  # type: ignore[method-assign]
    with FilesCache(tmp_path / "c.db") as cache:
        with pytest.raises(RuntimeError):
            run_backup(repo, [src], files_cache=cache)
        assert len(cache) == 0


def test_recent_files_are_not_cached(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "fresh").write_bytes(b"just written")
    with FilesCache(tmp_path / "c.db") as cache:
        run_backup(repo, [src], files_cache=cache)
        assert len(cache) == 0  # same-tick changes would otherwise go unnoticed
        assert run_backup(repo, [src], files_cache=cache).files_read == 1


def test_dedup_across_files(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(200_000)
    (src / "one").write_bytes(data)
    first = run_backup(repo, [src])
    assert first.added_bytes > 200_000
    (src / "two").write_bytes(data)
    second = run_backup(repo, [src])
    assert second.files_read == 2
    assert second.added_bytes < 10_000  # only new trees (src and its parents)


class CountBytes(NullProgress):
    def __init__(self) -> None:
        self.total = 0

    def on_bytes(self, n: int) -> None:
        self.total += n


@pytest.mark.parametrize("alone", [True, False])
def test_fine_tuned_copy_stores_only_what_changed(repo: Repository, tmp_path: Path,
                                                  alone: bool) -> None:
    """A large file read alone has its chunks hashed in the read buffer and only new
    ones copied out; read beside another, every chunk goes to the blob threads. Both
    must deduplicate alike, count every byte, and restore exactly."""
    src = tmp_path / "src"
    src.mkdir()

    def write(name: str, data: bytes) -> None:
        (src / name).write_bytes(data)
        os.utime(src / name, ns=(PAST, PAST))  # old enough for the files cache

    base = os.urandom(2 << 20)
    write("ckpt", base)
    cache = FilesCache(tmp_path / "files.db")
    counted = CountBytes()
    try:
        first = run_backup(repo, [src], workers=2, files_cache=cache)
        tuned = bytearray(base)
        tuned[700_000:760_000] = os.urandom(60_000)  # some tensors changed
        write("tuned", bytes(tuned))
        if not alone:
            write("other", os.urandom(1 << 20))
        res = run_backup(repo, [src], workers=2, files_cache=cache, progress=counted)
    finally:
        cache.close()
    assert first.added_bytes > 2 << 20
    assert res.files_read == (1 if alone else 2)  # the cache vouches for ckpt
    assert counted.total == res.bytes
    new_data = 0 if alone else 1 << 20
    assert new_data < res.added_bytes < new_data + 150_000  # the changed chunks, trees
    out = tmp_path / "out"
    assert restore(reopen(repo), res.snapshot_id, out).errors == []
    for name in ("ckpt", "tuned", *(() if alone else ("other",))):
        assert under(out, src / name).read_bytes() == (src / name).read_bytes()


# -- errors during backup ----------------------------------------------------------------

class VanishOnStart(NullProgress):
    def __init__(self, victim: Path) -> None:
        self.victim = victim
        self.errors: list[tuple[str, str]] = []
        self.started: tuple[int, int] | None = None

    def on_start(self, total_files: int, total_bytes: int) -> None:
        self.started = (total_files, total_bytes)
        self.victim.unlink()

    def on_error(self, path: str, msg: str) -> None:
        self.errors.append((path, msg))


def _entry_at(scan: Scan, path: Path) -> Entry:
    e = scan.root
    for name in str(path).strip("/").split("/"):
        assert e.children is not None
        e = e.children[name]
    return e


def _root_nodes(repo: Repository, snapshot_id: str) -> dict[str, dict[str, Any]]:
    """The nodes of the backed-up directory (the snapshot of one path), by name."""
    tree = repo.load_object("snapshots", snapshot_id)["tree"]
    path = repo.load_object("snapshots", snapshot_id)["paths"][0]
    for name in path.strip("/").split("/"):
        tree = next(n for n in load_tree(repo, tree) if n["name"] == name)["subtree"]
    return {n["name"]: n for n in load_tree(repo, tree)}


def test_unchanged_directories_trees_are_saved_while_files_are_read(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    (src / "same" / "deeper").mkdir(parents=True)
    (src / "same" / "one").write_bytes(b"one")
    (src / "same" / "deeper" / "two").write_bytes(b"two" * 100)
    (src / "changed").mkdir()
    (src / "changed" / "big.bin").write_bytes(os.urandom(64 << 10))
    (src / "changed" / "kept").write_bytes(b"kept")
    (src / "failing").mkdir()
    (src / "failing" / "sibling").write_bytes(b"sibling")
    (src / "failing" / "vanish").write_bytes(b"first")
    (src / "links").mkdir()
    (src / "links" / "h1").write_bytes(b"linked")
    set_times(src)
    with FilesCache(tmp_path / "c.db") as cache:
        first = run_backup(repo, [src], files_cache=cache)
        assert first.files_read == 7
        # a new file, one that vanishes once the scan has seen it changed, and a new
        # hard link (its twin is read again: its ctime changed): their directories
        # must wait, the others not
        (src / "changed" / "big.bin").write_bytes(os.urandom(64 << 10))
        (src / "failing" / "vanish").write_bytes(b"second")
        os.link(src / "links" / "h1", src / "links" / "h2")
        scan = Scan([src])
        same, changed = _entry_at(scan, src / "same"), _entry_at(scan, src / "changed")
        saved_before_read: dict[str, bool] = {}
        read_file = backup_module._Backup.read_file

        def slow_read(self: Any, e: Entry) -> Any:
            if e.name == "big.bin":  # the read waits for the unchanged tree, up to 10 s
                deadline = time.monotonic() + 10
                while not same.subtree and time.monotonic() < deadline:
                    time.sleep(0.005)
                saved_before_read["same"] = bool(same.subtree)
                saved_before_read["changed"] = bool(changed.subtree)
            return read_file(self, e)

        monkeypatch.setattr(backup_module._Backup, "read_file", slow_read)
        second = run_backup(repo, scan, files_cache=cache,
                            progress=VanishOnStart(src / "failing" / "vanish"))
    assert saved_before_read == {"same": True, "changed": False}
    assert second.files_read == 2 and second.partial  # big.bin and h1
    assert [e["path"] for e in second.errors] == [str(src / "failing" / "vanish")]
    assert (second.files, second.dirs) == (7, first.dirs)  # h2 in, the failed file out

    # the trees are those a backup reading everything anew makes
    monkeypatch.undo()
    repo = reopen(repo)
    third = run_backup(repo, [src])
    assert (third.files_read, third.files) == (6, 7) and not third.partial  # h2: a link
    made, anew = _root_nodes(repo, second.snapshot_id), _root_nodes(repo, third.snapshot_id)
    for name in ("same", "changed", "links"):
        assert made[name] == anew[name]
    failing = load_tree(repo, made["failing"]["subtree"])
    assert [n["name"] for n in failing] == ["sibling"]
    out = tmp_path / "out"
    assert restore(repo, second.snapshot_id, out).errors == []
    restored = under(out, src)
    assert (restored / "changed" / "big.bin").read_bytes() == (
        src / "changed" / "big.bin").read_bytes()
    assert os.stat(restored / "links" / "h1").st_ino == os.stat(restored / "links" / "h2").st_ino


def test_vanished_file_gives_partial_snapshot(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "keep").write_bytes(b"keep me")
    (src / "gone").write_bytes(b"vanishes")
    prog = VanishOnStart(src / "gone")
    res = run_backup(repo, [src], progress=prog)
    assert prog.started == (2, 15)
    assert res.partial
    assert [e["path"] for e in res.errors] == [str(src / "gone")]
    assert prog.errors and prog.errors[0][0] == str(src / "gone")
    obj = repo.load_object("snapshots", res.snapshot_id)
    assert obj["partial"] is True and obj["errors"] == res.errors
    out = tmp_path / "out"
    assert restore(repo, res.snapshot_id, out).errors == []
    assert sorted(os.listdir(under(out, src))) == ["keep"]


def test_missing_path_is_reported_and_named_socket_too(repo: Repository,
                                                       tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "sock"))
        res = run_backup(repo, [src, tmp_path / "missing", tmp_path / "sock"])
    finally:
        sock.close()
    assert res.partial
    msgs = {e["path"]: e["error"] for e in res.errors}
    assert "socket" in msgs[str(tmp_path / "sock")]  # asked for by name: cannot be saved
    assert str(tmp_path / "missing") in msgs
    assert snapshot_paths(repo, res.snapshot_id) >= {str(src / "f")}


def test_sockets_below_the_paths_are_skipped_not_errors(repo: Repository,
                                                        tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "session" / "sockets").mkdir(parents=True)
    (src / "f").write_bytes(b"f")
    socks = []
    try:
        for name in ("raylet", "plasma_store"):
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(src / "session" / "sockets" / name))
            socks.append(s)
        res = run_backup(repo, [src])
    finally:
        for s in socks:
            s.close()
    assert not res.partial and res.errors == []
    assert res.sockets_skipped == 2
    paths = snapshot_paths(repo, res.snapshot_id)
    assert str(src / "f") in paths and str(src / "session" / "sockets") in paths
    assert not any(p.endswith(("raylet", "plasma_store")) for p in paths)
    snap = repo.load_object("snapshots", res.snapshot_id)
    assert snap["partial"] is False and snap["summary"]["sockets_skipped"] == 2


def test_file_changing_size_while_read(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "grows").write_bytes(b"a" * 10)

    class Grow(NullProgress):
        def on_start(self, total_files: int, total_bytes: int) -> None:
            (src / "grows").write_bytes(os.urandom(100_000))

    res = run_backup(repo, [src], progress=Grow())
    assert not res.partial
    out = tmp_path / "out"
    restore(repo, res.snapshot_id, out)
    assert (under(out, src) / "grows").read_bytes() == (src / "grows").read_bytes()


# -- excludes, one file system, paths ----------------------------------------------------

def test_excludes(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "cache" / "x").write_bytes(b"x")
    (src / "keep.txt").write_bytes(b"k")
    (src / "junk.tmp").write_bytes(b"j")
    (src / "sub").mkdir()
    (src / "sub" / "deep.tmp").write_bytes(b"d")
    (src / "sub" / "model.bin").write_bytes(b"m")
    res = run_backup(repo, [src], excludes=["*.tmp", f"{src}/cache", "**/model.bin"])
    assert repo.load_object("snapshots", res.snapshot_id)["excludes"] == [
        "*.tmp", f"{src}/cache", "**/model.bin"]
    names = {p.removeprefix(str(src)) for p in snapshot_paths(repo, res.snapshot_id)
             if p.startswith(str(src))}
    assert names == {"", "/keep.txt", "/sub"}


def test_is_excluded_and_normalize_paths() -> None:
    assert is_excluded("/a/b/c.tmp", ["*.tmp"])
    assert is_excluded("/a/b/c", ["/a/*"])
    assert is_excluded("/a/b/c", ["c"])
    assert not is_excluded("/a/b/c", ["b"])
    assert normalize_paths(["/a/b", "/a", "/c/../d/", "/ab"]) == ["/a", "/ab", "/d"]
    assert normalize_paths(["/x", "/"]) == ["/"]


def test_one_file_system(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    res = run_backup(repo, [src], one_file_system=True)
    assert not res.partial and res.files == 1


@pytest.mark.skipif(not os.path.isdir("/dev/shm")
                    or os.stat("/dev/shm").st_dev == os.stat("/dev").st_dev,
                    reason="needs /dev/shm on its own file system below /dev")
def test_one_file_system_does_not_cross_mounts(repo: Repository, tmp_path: Path) -> None:
    marker = Path("/dev/shm") / f"swarm-maint-test-{os.getpid()}"
    marker.write_bytes(b"other fs")
    try:
        res = run_backup(repo, ["/dev"], one_file_system=True)
        paths = snapshot_paths(repo, res.snapshot_id)
        assert "/dev/shm" in paths and str(marker) not in paths
        res2 = run_backup(repo, ["/dev"], one_file_system=False)
        assert str(marker) in snapshot_paths(repo, res2.snapshot_id)
    finally:
        marker.unlink()


def test_backup_of_several_paths_and_a_single_file(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "x" / "y" / "f").write_bytes(b"1")
    (tmp_path / "z").write_bytes(b"2")
    res = run_backup(repo, [tmp_path / "z", tmp_path / "x" / "y", tmp_path / "x" / "y" / "f"])
    obj = repo.load_object("snapshots", res.snapshot_id)
    assert obj["paths"] == [str(tmp_path / "x" / "y"), str(tmp_path / "z")]
    paths = snapshot_paths(repo, res.snapshot_id)
    assert {str(tmp_path / "x" / "y" / "f"), str(tmp_path / "z")} <= paths
    assert res.files == 2


# -- snapshots: find, list, diff, includes ------------------------------------------------

def test_find_and_list_snapshots(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    with pytest.raises(RepositoryError):
        find_snapshot(repo, "latest")

    class Clock:
        def __init__(self, t: float) -> None:
            self.t = t

        def time(self) -> float:
            return self.t

        def monotonic(self) -> float:
            return 0.0

    a = run_backup(repo, [src], clock=Clock(2000.0)).snapshot_id
    b = run_backup(repo, [src], clock=Clock(1000.0)).snapshot_id
    assert [s for s, _ in list_snapshots(repo)] == [b, a]
    assert find_snapshot(repo, "latest")[0] == a
    assert find_snapshot(repo, a[:8])[0] == a
    assert find_snapshot(repo, b.upper())[0] == b
    for bad in ("zz", "", "0" * 65 if not a.startswith("0") else "f" * 65):
        with pytest.raises(RepositoryError):
            find_snapshot(repo, bad)
    ids = [repo.save_object("snapshots", {"time": float(i), "tree": "00" * 32})
           for i in range(17)]
    firsts = [i[0] for i in ids]
    shared = next(c for c in firsts if firsts.count(c) > 1)  # pigeonhole: 17 > 16
    with pytest.raises(RepositoryError, match="ambiguous"):
        find_snapshot(repo, shared)


def test_parent_is_the_latest_backup_of_the_same_paths_from_the_same_host(
        repo: Repository, tmp_path: Path) -> None:
    src, other = tmp_path / "src", tmp_path / "other"
    for d in (src, other):
        d.mkdir()
        (d / "f").write_bytes(b"f")

    def snap(paths: list[Path], host: str) -> dict[str, Any]:
        sid = run_backup(repo, paths, hostname=host).snapshot_id
        return {"id": sid, **repo.load_object("snapshots", sid)}

    a = snap([src], "h1")
    assert a["parent"] is None  # the first backup of these paths
    b = snap([src], "h1")
    assert b["parent"] == a["id"]
    assert snap([src], "h2")["parent"] is None  # another host
    assert snap([src, other], "h1")["parent"] is None  # other paths
    c = snap([src], "h1")
    assert c["parent"] == b["id"]  # the latest, not the first
    # a damaged snapshot is passed over, and the backup still completes
    path = tmp_path / "repo" / "snapshots" / c["id"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert snap([src], "h1")["parent"] == b["id"]
    given = run_backup(repo, [src], hostname="h1", parent="ab" * 32).snapshot_id
    assert repo.load_object("snapshots", given)["parent"] == "ab" * 32
    assert with_parent(repo, b["id"]) == (a["id"], b["id"])
    with pytest.raises(SnapshotSelectorError, match="no parent"):
        with_parent(repo, a["id"])


def test_diff(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "same").write_bytes(b"same")
    (src / "mod").write_bytes(b"before")
    (src / "gone").write_bytes(b"gone")
    (src / "d" / "gone2").write_bytes(b"x")
    set_times(src)
    a = run_backup(repo, [src]).snapshot_id
    (src / "mod").write_bytes(b"after!")
    (src / "gone").unlink()
    (src / "d" / "gone2").unlink()
    (src / "d").rmdir()
    (src / "new").mkdir()
    (src / "new" / "f").write_bytes(b"f")
    os.utime(src, ns=(PAST, PAST))
    b = run_backup(repo, [src]).snapshot_id
    s = str(src)
    assert diff_snapshots(repo, a, b) == [
        ("-", f"{s}/d"), ("-", f"{s}/d/gone2"), ("-", f"{s}/gone"),
        ("M", f"{s}/mod"), ("+", f"{s}/new"), ("+", f"{s}/new/f"),
    ]
    assert ("+", f"{s}/d") in diff_snapshots(repo, b, a)


def test_includes(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "models" / "llama").mkdir(parents=True)
    (src / "models" / "llama" / "w.bin").write_bytes(b"w")
    (src / "models" / "other.bin").write_bytes(b"o")
    (src / "logs").mkdir()
    (src / "logs" / "a.log").write_bytes(b"a")
    (src / "notes.txt").write_bytes(b"n")
    set_times(src)
    res = run_backup(repo, [src])
    out = tmp_path / "out"
    rr = restore(repo, res.snapshot_id, out, includes=[f"{src}/models/llama", "*.log"])
    assert rr.errors == []
    dst = under(out, src)
    got = sorted(os.path.relpath(os.path.join(d, f), dst)
                 for d, _dirs, files in os.walk(dst) for f in files)
    assert got == ["logs/a.log", "models/llama/w.bin"]
    # parents of matches are created with their metadata
    assert os.lstat(dst / "models").st_mtime_ns == os.lstat(src / "models").st_mtime_ns
    rr = restore(repo, res.snapshot_id, tmp_path / "out2", includes=["nothing-matches"])
    assert (rr.files, rr.dirs) == (0, 0)


def test_walk_snapshot_and_list_files(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"f")
    res = run_backup(repo, [src])
    obj = repo.load_object("snapshots", res.snapshot_id)
    rel = [p for p, _n in walk_snapshot(repo, obj["tree"])]
    assert rel[-3:] == [str(src)[1:], f"{str(src)[1:]}/d", f"{str(src)[1:]}/d/f"]
    files = dict(list_files(repo, "latest"))
    assert files[f"{src}/d/f"]["type"] == "file" and files[f"{src}/d"]["type"] == "dir"


# -- hostile repositories -----------------------------------------------------------------

def _node(name: str, kind: str, **kw: Any) -> dict[str, Any]:
    n: dict[str, Any] = {"name": name, "type": kind, "mode": 0o755, "uid": 0, "gid": 0,
                         "mtime_ns": PAST, "size": 0, "inode": 1, "dev": 1, "nlink": 1}
    n.update(kw)
    return n


def _evil_file(repo: Repository, name: str) -> dict[str, Any]:
    data = b"pwned " + name.encode("utf-8", "surrogateescape")
    bid, _ = repo.add_blob(DATA, data)
    return _node(name, "file", mode=0o644, size=len(data), content=[bid.hex()])


def _snapshot(repo: Repository, tree_raw: bytes) -> str:
    tid, _ = repo.add_blob(TREE, tree_raw)
    repo.flush()
    return repo.save_object("snapshots", {
        "version": 1, "time": 1.0, "hostname": "evil", "username": "evil", "paths": ["/"],
        "tags": [], "tree": tid.hex(), "parent": None, "excludes": [], "partial": False,
        "errors": [], "summary": {}, "program": "evil"})


def _assert_untouched(outside: Path) -> None:
    assert os.listdir(outside) == []


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    p = tmp_path / "outside"
    p.mkdir()
    yield p
    _assert_untouched(p)


def test_hostile_names_are_refused(repo: Repository, tmp_path: Path, outside: Path) -> None:
    target = tmp_path / "target" / "deep"
    evil_names = ["", ".", "..", "/etc", "a/b", f"../../{outside.name}/x", "nul\x00x"]
    sub_id, _ = repo.add_blob(TREE, encode_tree([_evil_file(repo, "inner")]))
    nodes = [_evil_file(repo, n) for n in evil_names]
    nodes.append(_node("..", "dir", subtree=sub_id.hex()) | {"name": "..."})  # fine name
    nodes.append(_evil_file(repo, "ok"))
    # a directory named ".." and a symlink named "/tmp" in the same tree
    raw = json.dumps({"nodes": sorted(nodes, key=lambda n: os.fsencode(n["name"]))},
                     sort_keys=True, separators=(",", ":")).encode()
    sid = _snapshot(repo, raw)
    rr = restore(repo, sid, target)
    refused = [e for e in rr.errors if "unsafe name" in e["error"]]
    assert len(refused) == len(evil_names)
    assert sorted(os.listdir(target)) == ["...", "ok"]
    assert (target / "..." / "inner").read_bytes() == b"pwned inner"
    assert os.listdir(tmp_path / "target") == ["deep"]


def test_duplicate_names_symlink_then_dir_is_rejected(repo: Repository, tmp_path: Path,
                                                      outside: Path) -> None:
    sub_id, _ = repo.add_blob(TREE, encode_tree([_evil_file(repo, "payload")]))
    nodes = [_node("link", "symlink", target=str(outside)),
             _node("link", "dir", subtree=sub_id.hex())]
    raw = json.dumps({"nodes": nodes}, sort_keys=True, separators=(",", ":")).encode()
    sid = _snapshot(repo, raw)
    rr = restore(repo, sid, tmp_path / "target")
    assert rr.errors and "malformed tree" in rr.errors[0]["error"]
    assert os.listdir(tmp_path / "target") == []


def test_symlinks_in_the_target_are_never_followed(repo: Repository, tmp_path: Path,
                                                   outside: Path) -> None:
    sub_id, _ = repo.add_blob(TREE, encode_tree([_evil_file(repo, "payload")]))
    inner_id, _ = repo.add_blob(TREE, encode_tree([
        _node("link", "dir", subtree=sub_id.hex()), _evil_file(repo, "x")]))
    sid = _snapshot(repo, encode_tree([
        _node("link", "dir", subtree=sub_id.hex()),
        _node("sub", "dir", subtree=inner_id.hex()),
        _evil_file(repo, "file-link"),
    ]))
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "link")  # e.g. left by an earlier hostile restore
    (target / "sub").mkdir()
    os.symlink(outside, target / "sub" / "link")
    os.symlink(outside / "victim", target / "file-link")
    rr = restore(repo, sid, target)
    bad = sorted(e["path"] for e in rr.errors)
    assert bad == ["/link", "/sub/link"]
    assert os.path.islink(target / "link")
    # a file is renamed over the symlink, never written through it
    assert not os.path.islink(target / "file-link")
    assert (target / "file-link").read_bytes() == b"pwned file-link"
    assert (target / "sub" / "x").read_bytes() == b"pwned x"


def test_restored_symlinks_are_not_followed_by_later_entries(
        repo: Repository, tmp_path: Path, outside: Path) -> None:
    # "a" is a symlink to outside, and "a" reappears as a hard-link leader path
    hard = _evil_file(repo, "h1") | {"nlink": 2, "inode": 77, "dev": 9}
    sid = _snapshot(repo, encode_tree([
        _node("a", "symlink", target=str(outside)),
        hard,
        hard | {"name": "h2"},
    ]))
    rr = restore(repo, sid, tmp_path / "target")
    assert rr.errors == []
    t = tmp_path / "target"
    assert os.readlink(t / "a") == str(outside)
    assert os.lstat(t / "h1").st_ino == os.lstat(t / "h2").st_ino


# -- damaged data -------------------------------------------------------------------------

def damage_blob(repo: Repository, bid: bytes) -> str:
    """Flip one byte inside blob ``bid`` in its pack; the pack's name."""
    loc = repo.index.get(bid)
    assert loc is not None
    name = pack_name(loc.pack_id)
    path = repo.storage.root / name  # type: ignore[attr-defined]
    raw = bytearray(path.read_bytes())
    raw[loc.entry.offset + 40] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(raw))
    return name


def test_tampered_pack_is_reported_never_written(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    victim = os.urandom(50_000)
    (src / "victim").write_bytes(victim)
    (src / "fine").write_bytes(b"fine")
    res = run_backup(repo, [src])
    chunker = repo.new_chunker()
    bid = repo.blob_id(next(iter(chunker.cut_buf(victim))).data)
    name = damage_blob(repo, bid)

    fresh = reopen(repo)
    out = tmp_path / "out"
    rr = restore(fresh, res.snapshot_id, out)
    assert [e["path"] for e in rr.errors] == [str(src / "victim")]
    assert name in rr.errors[0]["error"]
    dst = under(out, src)
    assert sorted(os.listdir(dst)) == ["fine"]  # no partial or wrong file left behind
    with pytest.raises(DamagedObjectError, match=name):
        fresh.load_blob(bid)


def test_tampered_chunk_midway_through_a_large_file_is_reported_never_written(
        repo: Repository, tmp_path: Path) -> None:
    """A file large enough for the staged, direct-write path, damaged in a chunk far
    from its start: that file is reported and removed (no prefix of it is left), the
    other large file restores exactly, and the restore finishes (the aligned staging
    buffers are released whatever the error)."""
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(4)
    victim, fine = rng.randbytes(3 << 20), rng.randbytes((2 << 20) + 17)
    (src / "victim").write_bytes(victim)
    (src / "fine").write_bytes(fine)
    res = run_backup(repo, [src])
    chunker = repo.new_chunker()
    chunks = list(chunker.cut_buf(victim))
    bid = repo.blob_id(chunks[len(chunks) // 2].data)
    name = damage_blob(repo, bid)

    out = tmp_path / "out"
    rr = restore(reopen(repo), res.snapshot_id, out)
    assert [e["path"] for e in rr.errors] == [str(src / "victim")]
    assert name in rr.errors[0]["error"]
    dst = under(out, src)
    assert sorted(os.listdir(dst)) == ["fine"]
    assert (dst / "fine").read_bytes() == fine
