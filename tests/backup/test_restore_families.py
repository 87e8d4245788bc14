"""Restore of large files that share chunks (a fine-tuned copy and its original), of
files that repeat chunks, and the overlap of large and small files."""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from swarm_maint.backup import restore as restore_mod
from swarm_maint.backup.backup import run_backup
from swarm_maint.backup.repository import ChunkerParams, Repository
from swarm_maint.backup.restore import _groups, _Item, _Restore, restore
from swarm_maint.backup.storage import LocalStorage
from tests.backup.test_backup_restore import damage_blob, reopen, under

MIB = 1 << 20


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStorage(tmp_path / "repo"), "pw",
                           ChunkerParams(1024, 4096, 16384))


def counting(repo: Repository) -> Counter[bytes]:
    """Count every chunk ``repo`` loads from now on."""
    loads: Counter[bytes] = Counter()
    real: Callable[[bytes], bytes] = repo.load_blob

    def load_blob(bid: bytes) -> bytes:
        loads[bid] += 1
        return real(bid)

    repo.load_blob = load_blob  # type: ignore[method-assign]
    return loads


def chunk_ids(repo: Repository, data: bytes) -> list[bytes]:
    return [repo.blob_id(c.data) for c in repo.new_chunker().cut_buf(data)]


def no_temp_files(root: Path) -> bool:
    return not [n for _d, _s, names in os.walk(root) for n in names if n.startswith(".smr-")]


def checkpoints(src: Path) -> dict[str, bytes]:
    """An original, a copy with a tenth changed in the middle (another directory, as a
    fine-tuned copy would be), an unrelated file, and small files beside them."""
    rng = random.Random(11)
    orig = rng.randbytes(3 * MIB)
    tuned = bytearray(orig)
    tuned[MIB:MIB + 300_000] = rng.randbytes(300_000)
    files = {"ckpt/model.safetensors": orig, "tuned/model.safetensors": bytes(tuned),
             "ckpt/other.safetensors": rng.randbytes(2 * MIB + 5)}
    files |= {f"shards/{i:03}.json": rng.randbytes(rng.randrange(1, 3000)) for i in range(40)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return files


def test_files_sharing_chunks_are_restored_together_each_chunk_decoded_once(
        repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = checkpoints(src)
    res = run_backup(repo, [src])
    fresh = reopen(repo)
    loads = counting(fresh)
    out = tmp_path / "out"
    rr = restore(fresh, res.snapshot_id, out)
    assert rr.errors == []
    for rel, data in files.items():
        assert (under(out, src) / rel).read_bytes() == data
    orig, tuned = files["ckpt/model.safetensors"], files["tuned/model.safetensors"]
    shared = set(chunk_ids(repo, orig)) & set(chunk_ids(repo, tuned))
    assert len(shared) > len(set(chunk_ids(repo, orig))) // 2  # the case is the one meant
    assert all(loads[bid] == 1 for bid in shared)
    assert max(loads.values()) == 1
    assert no_temp_files(out)


def test_a_file_that_repeats_chunks_decodes_them_once_and_within_the_budget(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks that come back within a file are kept decoded for their next use; with no
    budget to keep them they are loaded again, and the content is exact either way."""
    rng = random.Random(5)
    block = rng.randbytes(200_000)
    data = b"".join([block, rng.randbytes(MIB), block, rng.randbytes(300_000), block])
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.pt").write_bytes(data)
    res = run_backup(repo, [src])
    ids = chunk_ids(repo, data)
    repeated = {bid for bid, n in Counter(ids).items() if n > 1}
    assert repeated

    fresh = reopen(repo)
    loads = counting(fresh)
    rr = restore(fresh, res.snapshot_id, tmp_path / "kept")
    assert rr.errors == []
    assert (under(tmp_path / "kept", src) / "weights.pt").read_bytes() == data
    assert set(ids) <= set(loads) and max(loads.values()) == 1  # (trees load too)

    monkeypatch.setattr(restore_mod, "_KEEP_BYTES", 0)
    fresh = reopen(repo)
    loads = counting(fresh)
    rr = restore(fresh, res.snapshot_id, tmp_path / "evicted")
    assert rr.errors == []
    assert (under(tmp_path / "evicted", src) / "weights.pt").read_bytes() == data
    assert all(loads[bid] > 1 for bid in repeated)


def test_a_chunk_damaged_in_one_member_fails_that_file_only(
        repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = checkpoints(src)
    res = run_backup(repo, [src])
    orig, tuned = files["ckpt/model.safetensors"], files["tuned/model.safetensors"]
    own = [b for b in chunk_ids(repo, tuned) if b not in set(chunk_ids(repo, orig))]
    name = damage_blob(repo, own[len(own) // 2])

    out = tmp_path / "out"
    rr = restore(reopen(repo), res.snapshot_id, out)
    assert [e["path"] for e in rr.errors] == [str(src / "tuned/model.safetensors")]
    assert name in rr.errors[0]["error"]
    dst = under(out, src)
    assert not (dst / "tuned/model.safetensors").exists()
    for rel, data in files.items():
        if rel != "tuned/model.safetensors":
            assert (dst / rel).read_bytes() == data
    assert no_temp_files(out)


def test_a_damaged_shared_chunk_fails_every_file_that_holds_it(
        repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = checkpoints(src)
    res = run_backup(repo, [src])
    orig, tuned = files["ckpt/model.safetensors"], files["tuned/model.safetensors"]
    shared = [b for b in chunk_ids(repo, orig) if b in set(chunk_ids(repo, tuned))]
    damage_blob(repo, shared[-1])

    out = tmp_path / "out"
    rr = restore(reopen(repo), res.snapshot_id, out)
    assert sorted(e["path"] for e in rr.errors) == sorted(
        str(src / r) for r in ("ckpt/model.safetensors", "tuned/model.safetensors"))
    dst = under(out, src)
    assert not (dst / "ckpt/model.safetensors").exists()
    assert (dst / "ckpt/other.safetensors").read_bytes() == files["ckpt/other.safetensors"]
    assert no_temp_files(out)


def _large(name: str, content: list[str]) -> _Item:
    return _Item((name,), {"type": "file", "size": 4 * MIB, "content": content})


def test_families_join_the_file_they_share_most_with_up_to_four() -> None:
    base = [f"{i:064x}" for i in range(80)]
    orig = _large("orig", base)
    tuned = _large("tuned", base[:70] + [f"{i:064x}" for i in range(1000, 1010)])
    other = _large("other", [f"{i:064x}" for i in range(2000, 2080)])
    # shares 10 of its 80 chunks with ``other`` (1/8), 5 with ``orig``
    mixed = _large("mixed", base[:5] + other.node["content"][:10]
                   + [f"{i:064x}" for i in range(3000, 3065)])
    too_little = _large("little", base[:9] + [f"{i:064x}" for i in range(4000, 4071)])
    copies = [_large(f"copy{i}", list(base)) for i in range(4)]
    groups = _groups([orig, other, tuned, mixed, too_little, *copies])
    names = [[it.comps[0] for it in g] for g in groups]
    assert names == [["orig", "tuned", "copy0", "copy1"], ["other", "mixed"], ["little"],
                     ["copy2", "copy3"]]


def test_small_files_are_restored_while_a_large_one_is(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large file's restore waits, up to a deadline, until a small file's has started:
    it only finishes in time when the two kinds run side by side."""
    src = tmp_path / "src"
    files = checkpoints(src)
    res = run_backup(repo, [src])
    small_started = threading.Event()
    overlapped: list[bool] = []
    real_group = _Restore.restore_group

    def restore_group(self: _Restore, group: list[_Item]) -> Any:
        if group[0].node["size"] >= restore_mod._DIRECT_MIN:
            overlapped.append(small_started.wait(timeout=20))
        else:
            small_started.set()
        return real_group(self, group)

    monkeypatch.setattr(_Restore, "restore_group", restore_group)
    out = tmp_path / "out"
    rr = restore(reopen(repo), res.snapshot_id, out, workers=1)
    assert rr.errors == []
    assert overlapped and all(overlapped)
    for rel, data in files.items():
        assert (under(out, src) / rel).read_bytes() == data


def test_an_unexpected_error_in_one_thread_stops_the_restore(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    checkpoints(src)
    res = run_backup(repo, [src])
    before = threading.active_count()

    def broken(self: _Restore, group: list[_Item]) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(_Restore, "restore_group", broken)
    with pytest.raises(RuntimeError, match="bug"):
        restore(reopen(repo), res.snapshot_id, tmp_path / "out")
    assert threading.active_count() == before
