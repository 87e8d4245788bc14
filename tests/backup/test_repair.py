"""repair() on a real LocalStorage repository: lost and damaged packs and index files."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from swarm_maint.backup.packs import pack_name
from swarm_maint.backup.prune import prune
from swarm_maint.backup.repair import RepairResult, repair
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.storage.local import LocalStorage
from swarm_maint.backup.verify import VerifyReport, verify
from tests.backup.test_prune import CrashingStorage, assert_restorable, root_of, tree_state
from tests.backup.test_verify import (
    PASSWORD,
    add_snapshot,
    all_snapshot_blobs,
    file_blobs,
    flip_byte,
    new_repo,
    pack_path,
    reopen,
    sample_files,
    write_orphan_pack,
)


def _ids(repo: Repository) -> set[bytes]:
    return {bid for bid, _ in repo.index.blobs()}


def test_sound_repository_is_left_as_it_is(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    before = tree_state(root_of(repo))
    for read_data in (False, True):
        res = repair(reopen(repo), read_data=read_data)
        assert not res.changed
        assert res.packs_stored == res.packs_indexed == 2
        assert res.blobs_lost == res.blobs_salvaged == 0
        assert "nothing to do" in res.summary()
        json.dumps(res.to_dict())
    assert tree_state(root_of(repo)) == before
    assert_restorable(repo, sid)


def test_lost_index_file_is_rebuilt_from_the_packs(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    want = _ids(repo)
    for name in repo.storage.list("index/"):
        repo.storage.delete(name)
    assert not verify(reopen(repo)).ok  # every blob is missing now

    res = repair(reopen(repo))
    assert res.changed
    assert len(res.adopted_packs) == 2
    assert res.blobs_lost == 0
    fresh = reopen(repo)
    assert _ids(fresh) == want
    assert len(fresh.storage.list("index/")) == 1
    assert_restorable(fresh, sid)


def test_damaged_index_file_is_replaced(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    damaged = repo.storage.list("index/")[0]
    flip_byte(root_of(repo) / damaged, 20)
    assert verify(reopen(repo)).damaged_indexes

    res = repair(reopen(repo))
    assert res.damaged_index_files == [damaged]
    assert res.index_files_replaced == 2
    assert not repo.storage.exists(damaged)
    assert_restorable(repo, sid)
    report = verify(reopen(repo), read_data=True)
    assert report.ok and not report.warnings, report.lines()


def test_lost_pack_leaves_the_index_and_the_next_backup_heals_old_snapshots(
        tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    files = sample_files()
    old = add_snapshot(repo, files)
    lost = pack_path(repo, file_blobs(repo, old, "/model.bin")[0])
    lost.unlink()
    repo = reopen(repo)
    # the weakness repair exists for: a backup trusts the index and stores nothing again
    assert all(repo.has_blob(b) for b in file_blobs(repo, old, "/model.bin"))
    report = verify(repo)
    assert report.missing_packs
    assert "backup repair`" in (report.next_step or "")

    res = repair(repo)
    assert res.missing_packs == [pack_name(bytes.fromhex(lost.name))]
    assert res.blobs_lost > 0
    repo = reopen(repo)
    assert not any(repo.has_blob(b) for b in file_blobs(repo, old, "/model.bin"))
    after = verify(repo)
    assert not after.missing_packs
    needing = {a for p in after.missing_blobs for a in p.affected}
    assert (old[:8], "/model.bin") in needing
    assert "back up the same paths again" in (after.next_step or "")

    # the same files backed up again store the lost blobs under the same ids
    add_snapshot(repo, files)
    assert_restorable(repo, old)
    final = verify(reopen(repo), read_data=True)
    assert final.ok and not final.warnings, final.lines()


def test_damaged_pack_header_is_salvaged_through_the_old_index(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    path = pack_path(repo, file_blobs(repo, sid, "/model.bin")[0])
    flip_byte(path, path.stat().st_size - 10)  # inside the sealed header
    repo = reopen(repo)
    assert verify(repo, read_data=True).damaged_packs  # same size: structure cannot tell

    res = repair(repo)  # headers are read, so no --read-data is needed
    assert res.damaged_packs == [pack_name(bytes.fromhex(path.name))]
    assert res.blobs_salvaged > 0 and res.blobs_lost == 0
    assert res.packs_written == 1 and res.packs_deleted == 1
    assert not path.exists()
    assert_restorable(repo, sid)
    report = verify(reopen(repo), read_data=True)
    assert report.ok and not report.warnings, report.lines()


def test_damaged_blob_needs_read_data_and_only_it_is_lost(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    bad = file_blobs(repo, sid, "/sub/weights.pt")[1]
    loc = repo.index.get(bad)
    assert loc is not None
    path = pack_path(repo, bad)
    flip_byte(path, loc.entry.offset + loc.entry.length // 2)
    before = tree_state(root_of(repo))

    assert not repair(reopen(repo)).changed  # headers alone cannot see it
    assert tree_state(root_of(repo)) == before
    assert "--read-data" in (verify(reopen(repo), read_data=True).next_step or "")

    dry = repair(reopen(repo), read_data=True, dry_run=True)
    assert dry.changed and dry.blobs_lost == 1 and dry.packs_deleted == 0
    assert "would salvage" in dry.summary()
    assert tree_state(root_of(repo)) == before  # a dry run writes nothing

    res = repair(reopen(repo), read_data=True)
    assert res.damaged_packs == [pack_name(loc.pack_id)]
    assert res.blobs_lost == 1
    assert res.blobs_salvaged == len(loc_entries := repo.index.packs[loc.pack_id]) - 1
    assert len(loc_entries) > 1
    repo = reopen(repo)
    assert bad not in repo.index
    for b in file_blobs(repo, sid, "/model.bin"):
        repo.load_blob(b)  # its neighbours in the damaged pack survived
    report = verify(repo, read_data=True)
    assert [p.blob for p in report.missing_blobs] == [bad.hex()]
    assert report.missing_blobs[0].affected == [(sid[:8], "/sub/weights.pt")]
    assert not report.damaged_blobs and not report.damaged_packs


def test_orphan_packs_are_adopted_and_foreign_files_left_alone(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    orphan = write_orphan_pack(repo)
    foreign = root_of(repo) / "packs" / "notes.txt"
    foreign.write_text("mine")
    res = repair(reopen(repo))
    assert res.adopted_packs == [orphan]
    assert res.foreign_files == ["packs/notes.txt"]
    assert res.packs_stored == 3
    assert foreign.read_text() == "mine"
    repo = reopen(repo)
    assert any(p == orphan for p in (pack_name(x) for x in repo.index.packs))
    assert_restorable(repo, sid)


def test_unreadable_pack_is_never_deleted(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    path = pack_path(repo, file_blobs(repo, sid, "/model.bin")[0])
    name = pack_name(bytes.fromhex(path.name))

    class FailingDisk(LocalStorage):
        """Reads of one pack fail as on a disk with a bad sector."""

        def read_range(self, n: str, offset: int, length: int) -> bytes:
            if n == name:
                raise OSError(errno.EIO, "Input/output error")
            return super().read_range(n, offset, length)

        def read(self, n: str) -> bytes:
            if n == name:
                raise OSError(errno.EIO, "Input/output error")
            return super().read(n)

    before = tree_state(root_of(repo))
    for read_data in (False, True):
        res = repair(Repository.open(FailingDisk(root_of(repo)), PASSWORD),
                     read_data=read_data)
        assert res.unreadable_packs == [name]
        assert res.packs_stored == 2 and res.packs_indexed == 1  # the other, intact one
        assert not res.changed and res.blobs_lost == 0
    # left in place and in the index: the disk may recover, and prune must not take it
    assert tree_state(root_of(repo)) == before
    assert_restorable(repo, sid)


def test_crash_after_the_new_index_leaves_a_sound_repository(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    path = pack_path(repo, file_blobs(repo, sid, "/model.bin")[0])
    flip_byte(path, path.stat().st_size - 10)
    n_index = len(repo.storage.list("index/"))
    # dies deleting the damaged pack, after the new index and the old index files' removal
    crashing = Repository.open(CrashingStorage(root_of(repo), die_at_delete=n_index),
                               PASSWORD)
    with pytest.raises(OSError, match="simulated crash"):
        repair(crashing)
    assert path.exists()
    plain = reopen(repo)
    assert_restorable(plain, sid)
    report = verify(plain)
    assert [p.name for p in report.unreferenced_packs] == [
        pack_name(bytes.fromhex(path.name))]
    # the damaged pack left behind is garbage now: the next prune removes it
    prune(plain, grace_seconds=0)
    assert not path.exists()
    assert_restorable(plain, sid)


def test_concurrent_index_change_aborts(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    add_snapshot(repo, sample_files())

    class Racing(LocalStorage):
        calls = 0

        def list(self, prefix: str) -> list[str]:
            out = super().list(prefix)
            if prefix == "index/":
                Racing.calls += 1
                if Racing.calls == 2:
                    out = [*out, "index/" + "0" * 64]
            return out

    racing = Repository.open(Racing(root_of(repo)), PASSWORD)
    before = tree_state(root_of(repo))
    with pytest.raises(Exception, match="index files changed"):
        repair(racing)
    assert tree_state(root_of(repo)) == before


def test_all_blobs_of_every_snapshot_survive_a_full_read_repair(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    a = add_snapshot(repo, sample_files())
    b = add_snapshot(repo, {**sample_files(), "more.bin": os.urandom(20000)})
    res = repair(reopen(repo), read_data=True)
    assert not res.changed
    repo = reopen(repo)
    for sid in (a, b):
        for bid in all_snapshot_blobs(repo, sid):
            repo.load_blob(bid)


def test_files_no_object_can_be_are_left_alone(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    root = root_of(repo)
    strays = [root / "index" / "abcd", root / "index" / "junk", root / "snapshots" / "abcd"]
    for f in strays:
        f.write_text("someone else's")
    want = _ids(repo)
    for read_data in (False, True):
        res = repair(reopen(repo), read_data=read_data)
        assert not res.changed, res.summary()
    fresh = reopen(repo)
    assert _ids(fresh) == want  # the index files were neither superseded nor deleted
    report = verify(fresh)
    assert report.ok
    assert {p.name for p in report.foreign_files} == {"index/abcd", "index/junk"}
    assert fresh.list_objects("snapshots") == [sid]
    prune(fresh, grace_seconds=0)
    assert all(f.read_text() == "someone else's" for f in strays)
    assert_restorable(fresh, sid)


def test_a_fifo_in_place_of_a_pack_does_not_block(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    path = pack_path(repo, file_blobs(repo, sid, "/model.bin")[0])
    path.unlink()
    os.mkfifo(path)
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.extend(
        [verify(reopen(repo), read_data=True), repair(reopen(repo), read_data=True)]),
        daemon=True)
    worker.start()
    worker.join(60)
    assert len(done) == 2, "a read of the FIFO blocked"
    report, res = done
    assert isinstance(report, VerifyReport) and not report.ok
    assert isinstance(res, RepairResult)
    assert res.unreadable_packs == [pack_name(bytes.fromhex(path.name))]
    assert stat.S_ISFIFO(path.lstat().st_mode)  # left in place


def test_an_unsalvageable_damaged_pack_is_removed_and_copies_are_not_made_twice(
        tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    sid = add_snapshot(repo, sample_files())
    root = root_of(repo)
    junk_id = bytes(range(32))
    junk = root / pack_name(junk_id)
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(os.urandom(5000))  # named like a pack, nothing in it readable
    # an intact pack's bytes under another pack's name: its blobs are held intact already
    src = pack_path(repo, file_blobs(repo, sid, "/model.bin")[0])
    copy_id = bytes([0xAB]) * 32
    copy = root / pack_name(copy_id)
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(src.read_bytes())
    res = repair(reopen(repo), read_data=True)
    assert sorted(res.damaged_packs) == sorted([pack_name(junk_id), pack_name(copy_id)])
    assert res.blobs_salvaged == 0 and res.packs_written == 0  # nothing copied twice
    assert res.packs_deleted == 2 and not junk.exists() and not copy.exists()
    assert not res.changed  # the index already named the intact packs only
    again = repair(reopen(repo), read_data=True)
    assert not again.changed and not again.damaged_packs and "nothing to do" in again.summary()
    assert_restorable(repo, sid)
