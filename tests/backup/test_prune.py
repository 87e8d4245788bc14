"""prune() on a real LocalStorage repository: sweep, repack, grace period, crash safety."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from swarm_maint.backup.errors import DamagedObjectError
from swarm_maint.backup.packs import pack_name
from swarm_maint.backup.prune import prune
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.retention import forget
from swarm_maint.backup.storage.local import LocalStorage
from swarm_maint.backup.verify import verify
from tests.backup.test_verify import (
    CHUNK,
    PASSWORD,
    add_snapshot,
    all_snapshot_blobs,
    file_blobs,
    flip_byte,
    new_repo,
    reopen,
    write_orphan_pack,
)


def tree_state(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def stored_bytes(repo: Repository) -> int:
    return sum(repo.storage.size(n) for n in repo.storage.list("packs/"))


def root_of(repo: Repository) -> Path:
    assert isinstance(repo.storage, LocalStorage)
    return repo.storage.root


def assert_restorable(repo: Repository, sid: str) -> None:
    fresh = reopen(repo)
    for bid in all_snapshot_blobs(fresh, sid):
        fresh.load_blob(bid)
    report = verify(fresh, read_data=True)
    assert report.ok, report.lines()


def two_snapshots(repo: Repository) -> tuple[str, str]:
    old = add_snapshot(repo, {"a.bin": os.urandom(8 * CHUNK), "d": {"x": os.urandom(CHUNK)}},
                       when=time.time() - 7200)
    new = add_snapshot(repo, {"b.bin": os.urandom(4 * CHUNK)})
    return old, new


def test_forget_then_prune_frees_space(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    _, new = two_snapshots(repo)
    forget(repo, keep_last=1)
    assert repo.list_objects("snapshots") == [new]

    before = tree_state(root_of(repo))
    dry = prune(repo, dry_run=True)
    assert tree_state(root_of(repo)) == before  # a dry run changes nothing
    assert dry.dry_run
    assert dry.packs_deleted == 2  # the old snapshot's data pack and tree pack
    assert dry.bytes_freed > 8 * CHUNK

    size_before = stored_bytes(repo)
    res = prune(repo)
    assert res.packs_deleted == 2
    assert res.packs_repacked == 0
    assert res.packs_kept == 2
    assert res.index_files_replaced == 4
    assert res.bytes_freed == size_before - stored_bytes(repo) > 8 * CHUNK
    assert res.blobs_kept == len(set(all_snapshot_blobs(repo, new)))
    assert len(repo.storage.list("index/")) == 1
    assert "free" in res.summary()
    assert res.to_dict()["packs_deleted"] == 2
    assert_restorable(repo, new)
    assert not verify(reopen(repo)).warnings

    again = prune(reopen(repo))  # nothing left to do
    assert again.packs_deleted == again.packs_repacked == 0
    assert len(repo.storage.list("index/")) == 1


def test_repacks_a_half_used_pack(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    shared = os.urandom(CHUNK)
    old = add_snapshot(repo, {"shared": shared, "big": os.urandom(6 * CHUNK)})
    new = add_snapshot(repo, {"shared": shared, "c": os.urandom(2 * CHUNK)})
    shared_id = file_blobs(repo, new, "/shared")[0]
    loc = repo.index.get(shared_id)
    assert loc is not None
    mixed_pack = pack_name(loc.pack_id)
    forget(repo, keep_last=1)

    kept = prune(repo, repack_threshold=0.0, dry_run=True)
    assert kept.packs_repacked == 0

    res = prune(repo)
    assert res.packs_repacked == 1
    assert res.packs_written == 1
    assert res.packs_deleted == 1  # the old snapshot's tree pack
    assert res.blobs_removed == 6 + 1  # big's chunks, the old root tree
    assert not repo.storage.exists(mixed_pack)
    new_loc = repo.index.get(shared_id)
    assert new_loc is not None
    assert new_loc.pack_id != loc.pack_id
    assert repo.load_blob(shared_id) == shared
    assert_restorable(repo, new)
    assert old not in repo.list_objects("snapshots")


def test_grace_period_for_unreferenced_packs(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    _, new = two_snapshots(repo)
    orphan = write_orphan_pack(repo)

    res = prune(repo)
    assert res.unreferenced_kept == 1
    assert res.unreferenced_deleted == 0
    assert repo.storage.exists(orphan)

    # an injected clock two hours ahead makes it old
    dry = prune(repo, clock=lambda: time.time() + 7200, dry_run=True)
    assert dry.unreferenced_deleted == 1
    assert repo.storage.exists(orphan)

    hours_ago = time.time() - 7200
    os.utime(root_of(repo) / orphan, (hours_ago, hours_ago))
    res = prune(repo)
    assert res.unreferenced_deleted == 1
    assert orphan in res.deleted_packs
    assert not repo.storage.exists(orphan)
    assert_restorable(repo, new)


class CrashingStorage(LocalStorage):
    """Dies (raises) at the n-th delete, or when writing an index file if asked to."""

    def __init__(self, root: Path, die_at_delete: int | None = None,
                 die_on_index_write: bool = False) -> None:
        super().__init__(root)
        self.deletes = 0
        self.die_at_delete = die_at_delete
        self.die_on_index_write = die_on_index_write

    def delete(self, name: str) -> None:
        if self.die_at_delete is not None and self.deletes == self.die_at_delete:
            raise OSError(f"simulated crash deleting {name}")
        self.deletes += 1
        super().delete(name)

    def write(self, name: str, data: bytes | memoryview) -> None:
        if self.die_on_index_write and name.startswith("index/"):
            raise OSError(f"simulated crash writing {name}")
        super().write(name, data)


def _crash_setup(tmp_path: Path) -> tuple[Path, str]:
    repo = new_repo(tmp_path)
    shared = os.urandom(CHUNK)
    add_snapshot(repo, {"shared": shared, "big": os.urandom(6 * CHUNK)},
                 when=time.time() - 7200)
    new = add_snapshot(repo, {"shared": shared, "c": os.urandom(2 * CHUNK)})
    forget(repo, keep_last=1)
    return root_of(repo), new


@pytest.mark.parametrize("die_at", list(range(8)))
def test_crash_during_deletions_keeps_snapshots_restorable(tmp_path: Path,
                                                           die_at: int) -> None:
    root, new = _crash_setup(tmp_path)
    storage = CrashingStorage(root, die_at_delete=die_at)
    repo = Repository.open(storage, PASSWORD)
    try:
        prune(repo)
        crashed = False
    except OSError:
        crashed = True
    assert crashed == (die_at < 6)  # 4 index files, then 2 packs
    plain = Repository.open(LocalStorage(root), PASSWORD)
    assert_restorable(plain, new)
    # the next prune finishes the job (grace 0: the packs left behind are garbage)
    res = prune(plain, grace_seconds=0)
    assert res.packs_repacked == 0
    assert_restorable(plain, new)
    final = verify(reopen(plain), read_data=True)
    assert final.ok
    assert not final.warnings
    assert len(plain.storage.list("index/")) == 1


def test_crash_before_new_index_keeps_snapshots_restorable(tmp_path: Path) -> None:
    root, new = _crash_setup(tmp_path)
    before_index = sorted(os.listdir(root / "index"))
    repo = Repository.open(CrashingStorage(root, die_on_index_write=True), PASSWORD)
    with pytest.raises(OSError, match="simulated crash"):
        prune(repo)
    assert sorted(os.listdir(root / "index")) == before_index
    plain = Repository.open(LocalStorage(root), PASSWORD)
    assert_restorable(plain, new)
    report = verify(plain)
    assert len(report.unreferenced_packs) == 1  # the new pack of the repack
    res = prune(plain)
    assert res.unreferenced_kept == 1  # young: left for a backup to adopt
    assert_restorable(plain, new)


def test_unreadable_snapshot_aborts_before_deleting(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    old, new = two_snapshots(repo)
    repo.storage.delete(f"snapshots/{old}")  # its packs are garbage now...
    flip_byte(root_of(repo) / f"snapshots/{new}", 40)  # ...but the mark phase is incomplete
    before = tree_state(root_of(repo))
    with pytest.raises(DamagedObjectError, match="prune aborted"):
        prune(reopen(repo))
    assert tree_state(root_of(repo)) == before


def test_missing_tree_or_blob_aborts(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    _, new = two_snapshots(repo)
    blob = file_blobs(repo, new, "/b.bin")[0]
    loc = repo.index.get(blob)
    assert loc is not None
    (root_of(repo) / pack_name(loc.pack_id)).unlink()
    before = tree_state(root_of(repo))
    with pytest.raises(DamagedObjectError, match="prune aborted"):
        prune(reopen(repo))
    assert tree_state(root_of(repo)) == before


def test_damaged_index_refuses(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    two_snapshots(repo)
    name = repo.storage.list("index/")[0]
    flip_byte(root_of(repo) / name, 25)
    before = tree_state(root_of(repo))
    with pytest.raises(DamagedObjectError, match="index file"):
        prune(reopen(repo))
    assert tree_state(root_of(repo)) == before


def test_nothing_to_do_changes_nothing(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    _, new = two_snapshots(repo)
    before = tree_state(root_of(repo))
    res = prune(repo)
    assert res.packs_deleted == res.packs_repacked == res.bytes_freed == 0
    assert res.snapshots == 2
    assert tree_state(root_of(repo)) == before
    assert_restorable(repo, new)


def _many_blobs_snapshot(repo: Repository, name: str, blobs: int, when: float) -> str:
    """A snapshot of ``blobs`` tiny data blobs: 100 directories of one file each (with
    PACK_TARGET patched small, packs of ~800 blobs: what a pack of 1 MiB chunks holds
    is far less, and a pack of these at full size would hold ~100 000, whose one-pack
    transients would hide what grows with the blob count)."""
    from swarm_maint.backup.packs import DATA
    from swarm_maint.backup.tree import save_tree

    per = blobs // 100
    dirs = []
    for d in range(100):
        content = [repo.add_blob(DATA, os.urandom(24))[0].hex() for _ in range(per)]
        node = {"name": "f", "type": "file", "mode": 0o644, "uid": 0, "gid": 0,
                "mtime_ns": 0, "size": 24 * per, "inode": d, "dev": 1, "nlink": 1,
                "content": content}
        sub, _ = save_tree(repo, [node])
        dirs.append({"name": f"d{d}", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0,
                     "mtime_ns": 0, "size": 0, "inode": 1000 + d, "dev": 1, "nlink": 2,
                     "subtree": sub})
    root, _ = save_tree(repo, dirs)
    repo.flush()
    return repo.save_object("snapshots", {"version": 1, "time": when, "hostname": "h",
                                          "paths": [f"/{name}"], "tags": [], "tree": root})


T = TypeVar("T")


def _peak_beside_index(repo: Repository, command: Callable[[Repository], T]) -> tuple[T, int]:
    """(what ``command(repo)`` returned, the peak of what it allocated beyond the
    repository's loaded index), traced by tracemalloc."""
    import tracemalloc

    tracemalloc.start()
    try:
        repo.load_index()
        index_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = command(repo)
        return result, tracemalloc.get_traced_memory()[1] - index_bytes
    finally:
        tracemalloc.stop()


def _two_snapshots_of_many_blobs(tmp_path: Path, n: int) -> Repository:
    repo = new_repo(tmp_path)
    for name in ("one", "two"):
        _many_blobs_snapshot(repo, name, n, time.time())
    return reopen(repo)


@pytest.fixture
def small_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    import swarm_maint.backup.repository as repository

    monkeypatch.setattr(repository, "PACK_TARGET", 64 << 10)


@pytest.mark.usefixtures("small_packs")
def test_memory_per_blob_stays_small(tmp_path: Path) -> None:
    """Prune marks used blobs in bitmaps and reads the index one pack at a time: sets of
    ids and entry objects took ~400 bytes a blob beside the index (4 GB for a 10 TB
    repository of 1 MiB chunks); now it needs about what writing the new index takes."""
    repo = new_repo(tmp_path)
    n = 20_000
    keep = _many_blobs_snapshot(repo, "keep", n, time.time())
    gone = _many_blobs_snapshot(repo, "gone", n, time.time())
    repo = reopen(repo)
    repo.storage.delete(f"snapshots/{gone}")
    result, peak = _peak_beside_index(repo, lambda r: prune(r, grace_seconds=0))
    assert result.blobs_kept == n + 101  # and its trees
    assert result.packs_deleted >= 1 and result.blobs_removed >= n
    per_blob = peak / (2 * n)
    # mostly the new index, written whole: packed (50 bytes a kept blob) and sealed;
    # the old way took ~385 here
    assert per_blob < 90, per_blob
    assert_restorable(repo, keep)


@pytest.mark.usefixtures("small_packs")
def test_verify_memory_per_blob_stays_small(tmp_path: Path) -> None:
    """Verify counts the blobs snapshots reach in a bitmap and decodes the index one pack
    at a time, instead of a set of ids, a list of every tree's blobs and an entry object
    for each blob."""
    n = 20_000
    report, peak = _peak_beside_index(_two_snapshots_of_many_blobs(tmp_path, n), verify)
    assert report.ok and report.blobs_referenced == 2 * (n + 101)
    per_blob = peak / (2 * n)
    # mostly one index file at a time, read, decrypted and split into packs; the old
    # way took ~330 here
    assert per_blob < 90, per_blob


@pytest.mark.usefixtures("small_packs")
def test_repair_memory_per_blob_stays_small(tmp_path: Path) -> None:
    """Repair keeps the index it rebuilds packed (50 bytes a blob) and marks the blobs
    intact packs hold in a bitmap, instead of entry objects for the old and the new
    index and sets of ids."""
    from swarm_maint.backup.repair import repair

    n = 20_000
    result, peak = _peak_beside_index(_two_snapshots_of_many_blobs(tmp_path, n), repair)
    assert not result.changed and result.blobs_lost == 0
    per_blob = peak / (2 * n)
    # mostly the rebuilt index, packed; the old way took ~510 here
    assert per_blob < 90, per_blob
