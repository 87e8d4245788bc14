"""The repository core: keys, packs, index, objects; tampering, wrong password, full disk."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm_maint.backup.crypto import Crypto, MasterKey
from swarm_maint.backup.errors import (
    DamagedObjectError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    StorageFullError,
    WrongPasswordError,
)
from swarm_maint.backup.index import decode_index, encode_index
from swarm_maint.backup.packs import (
    DATA,
    TREE,
    PackWriter,
    compress_if_worth_it,
    decode_blob,
    pack_name,
    parse_header,
    read_header,
)
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.storage import LocalStorage

KEY = MasterKey.generate()
CRYPTO = Crypto(KEY)


def new_repo(path: Path, password: str = "correct horse") -> Repository:
    return Repository.init(LocalStorage(path), password)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([DATA, TREE]), st.binary(max_size=3000)),
                min_size=1, max_size=12, unique_by=lambda t: t[1]))
def test_pack_round_trip(blobs: list[tuple[int, bytes]]) -> None:
    w = PackWriter(CRYPTO)
    for kind, data in blobs:
        comp, payload = compress_if_worth_it(data)
        bid = CRYPTO.blob_id(data)
        from swarm_maint.backup.packs import blob_aad

        w.add(kind, bid, comp, CRYPTO.seal(payload, blob_aad(kind, bid)), len(data))
    entries = list(w.entries)
    _pack_id, raw = w.finish()
    hlen = int.from_bytes(raw[-4:], "little")
    parsed = parse_header(CRYPTO, raw[-4 - hlen:-4], len(raw), "p")
    assert parsed == entries
    for (kind, data), e in zip(blobs, parsed, strict=True):
        assert e.type == kind
        assert decode_blob(CRYPTO, e, raw[e.offset:e.offset + e.length], "p") == data


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.binary(min_size=32, max_size=32),
                       st.lists(st.binary(min_size=32, max_size=32), max_size=5), max_size=6),
       st.lists(st.binary(min_size=32, max_size=32), max_size=3))
def test_index_round_trip(packs: dict[bytes, list[bytes]], supersedes: list[bytes]) -> None:
    from swarm_maint.backup.packs import PackEntry

    full = {p: [PackEntry(DATA, 0, i * 100, 100, 80, b) for i, b in enumerate(ids)]
            for p, ids in packs.items()}
    _iid, sealed = encode_index(CRYPTO, full, supersedes)
    sup, back = decode_index(CRYPTO, sealed, "i")
    assert sup == supersedes
    assert back == full


def test_compression_decided_by_content() -> None:
    text = b'{"loss": 0.125, "step": 1000}\n' * 5000
    assert compress_if_worth_it(text)[0] == 1
    assert compress_if_worth_it(os.urandom(200_000))[0] == 0
    assert compress_if_worth_it(b"x")[0] == 0


def test_init_open_and_blobs(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    data = os.urandom(3 << 20)
    ids = [repo.add_blob(DATA, c.data)[0] for c in repo.new_chunker().cut_buf(data)]
    assert repo.add_blob(DATA, data[:100])[1] > 0
    assert repo.add_blob(DATA, data[:100])[1] == 0  # deduplicated
    repo.flush()
    again = Repository.open(LocalStorage(tmp_path / "r"), "correct horse")
    assert b"".join(again.load_blob(i) for i in ids) == data
    with pytest.raises(RepositoryExistsError):
        new_repo(tmp_path / "r")
    with pytest.raises(RepositoryNotFoundError, match="no repository"):
        Repository.open(LocalStorage(tmp_path / "nothing"), "x")


def test_wrong_password_is_one_clear_error_and_second_password_works(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    with pytest.raises(WrongPasswordError, match="wrong password"):
        Repository.open(LocalStorage(tmp_path / "r"), "incorrect")
    repo.add_password("second one")
    assert Repository.open(LocalStorage(tmp_path / "r"), "second one").id == repo.id
    assert Repository.open(LocalStorage(tmp_path / "r"), "correct horse").id == repo.id


def test_chunk_ids_and_boundaries_depend_on_the_repository_secret(tmp_path: Path) -> None:
    a, b = new_repo(tmp_path / "a"), new_repo(tmp_path / "b")
    data = os.urandom(6 << 20)
    cuts_a = [c.offset for c in a.new_chunker().cut_buf(data)]
    cuts_b = [c.offset for c in b.new_chunker().cut_buf(data)]
    assert cuts_a != cuts_b
    assert a.blob_id(b"same") != b.blob_id(b"same")


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def test_tampered_blob_detected_never_used(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    bid, _ = repo.add_blob(DATA, b"model weights " * 1000)
    repo.flush()
    loc = repo.index.get(bid)
    assert loc is not None
    pack = tmp_path / "r" / pack_name(loc.pack_id)
    flip_byte(pack, loc.entry.offset + 20)
    again = Repository.open(LocalStorage(tmp_path / "r"), "correct horse")
    with pytest.raises(DamagedObjectError, match="authentication failed") as err:
        again.load_blob(bid)
    assert pack_name(loc.pack_id) in str(err.value)


def test_loads_after_a_damaged_blob_still_work_while_its_error_is_kept(
        tmp_path: Path) -> None:
    """A restore keeps a damaged chunk's error (in its future) while the same thread goes
    on loading larger chunks: the direct-read buffer must still grow. The error's
    traceback holds a view of that buffer, and growing it once raised BufferError."""
    repo = new_repo(tmp_path / "r")
    small, large = os.urandom(300 << 10), os.urandom(3 << 20)
    small_id, _ = repo.add_blob(DATA, small)
    large_id, _ = repo.add_blob(DATA, large)
    repo.flush()
    loc = repo.index.get(small_id)
    assert loc is not None
    flip_byte(tmp_path / "r" / pack_name(loc.pack_id), loc.entry.offset + 20)
    again = Repository.open(LocalStorage(tmp_path / "r"), "correct horse")
    kept: list[BaseException] = []
    try:
        again.load_blob(small_id)
    except DamagedObjectError as exc:
        kept.append(exc)
    assert kept and kept[0].__traceback__ is not None
    assert again.load_blob(large_id) == large
    assert again.load_blob(large_id) == large
    with pytest.raises(DamagedObjectError):
        again.load_blob(small_id)


def test_tampered_config_and_snapshot_detected(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    sid = repo.save_object("snapshots", {"tree": "ab", "time": 1.0})
    cfg = tmp_path / "r" / "config"
    cfg.write_text(cfg.read_text().replace('"avg_size": 1048576', '"avg_size": 65536'))
    with pytest.raises(DamagedObjectError, match="config"):
        Repository.open(LocalStorage(tmp_path / "r"), "correct horse")
    snap = tmp_path / "r" / "snapshots" / sid
    flip_byte(snap, 30)
    with pytest.raises(DamagedObjectError):
        repo.load_object("snapshots", sid)


def test_unindexed_packs_are_adopted(tmp_path: Path) -> None:
    # a crash after packs were written but before their index: nothing is lost
    repo = new_repo(tmp_path / "r")
    data = os.urandom(20 << 20)
    ids = [repo.add_blob(DATA, c.data)[0] for c in repo.new_chunker().cut_buf(data)]
    repo._store_pack(repo._writer)  # the open pack reaches the disk, no index file yet
    for name in LocalStorage(tmp_path / "r").list("index/"):
        (tmp_path / "r" / name).unlink()
    again = Repository.open(LocalStorage(tmp_path / "r"), "correct horse")
    assert not any(again.has_blob(i) for i in ids)
    assert again.recover_unindexed_packs() >= 2
    assert all(again.has_blob(i) for i in ids)
    assert b"".join(again.load_blob(i) for i in ids) == data
    third = Repository.open(LocalStorage(tmp_path / "r"), "correct horse")
    assert all(third.has_blob(i) for i in ids)  # the adoption was written as an index


def test_storage_names_are_checked(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path)
    for bad in ("../x", "/etc/passwd", "a/../../b", "", "A", "a//b"):
        with pytest.raises(ValueError, match="invalid object name"):
            s.write(bad, b"x")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"the full-disk test needs root to mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_a_clear_error_and_keeps_what_was_stored(tiny_fs: Path) -> None:
    repo = new_repo(tiny_fs / "r")
    first = os.urandom(1 << 20)
    bid, _ = repo.add_blob(DATA, first)
    repo.flush()
    def fill() -> None:
        for _ in range(8):
            repo.add_blob(DATA, os.urandom(1 << 20))
            repo._store_pack(repo._writer)
            repo._writer = PackWriter(repo.crypto)

    with pytest.raises(StorageFullError, match="no space left"):
        fill()
    leftovers = list((tiny_fs / "r").rglob(".tmp-*"))
    assert leftovers == []
    again = Repository.open(LocalStorage(tiny_fs / "r"), "correct horse")
    assert again.load_blob(bid) == first


def test_full_disk_in_a_background_pack_store_reaches_the_caller(tiny_fs: Path) -> None:
    """Full packs are written by a background thread; its failure is raised by the
    next add_blob or by flush, never lost, and what was stored before stays readable."""
    repo = new_repo(tiny_fs / "r")
    first = os.urandom(1 << 20)
    bid, _ = repo.add_blob(DATA, first)
    repo.flush()

    def fill() -> None:
        for _ in range(40):  # several packs' worth: the first full one cannot be stored
            repo.add_blob(DATA, os.urandom(1 << 20))
        repo.flush()

    with pytest.raises(StorageFullError, match="no space left"):
        fill()
    with contextlib.suppress(StorageFullError):
        repo.flush()  # what is left cannot be stored either; the thread ends all the same
    assert [t for t in threading.enumerate() if t.name.startswith("pack-store")] == []
    assert list((tiny_fs / "r").rglob(".tmp-*")) == []
    again = Repository.open(LocalStorage(tiny_fs / "r"), "correct horse")
    assert again.load_blob(bid) == first


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=1 << 16), st.integers(0, 2000), st.binary(max_size=64))
def test_chunking_is_content_defined(prefix: bytes, cut: int, insert: bytes) -> None:
    repo_key = MasterKey.generate()
    from pyfastcdc import FastCDC

    ch = FastCDC(1024, min_size=256, max_size=4096, seed=repo_key.chunker_seed)
    body = os.urandom(64 << 10)
    data = prefix + body
    chunks = [bytes(c.data) for c in ch.cut_buf(data)]
    assert b"".join(chunks) == data
    cut = min(cut, len(data))
    edited = data[:cut] + insert + data[cut:]
    chunks2 = [bytes(c.data) for c in ch.cut_buf(edited)]
    assert b"".join(chunks2) == edited
    # an edit far before the end changes only nearby chunks: the tail is shared
    assert chunks[-1] == chunks2[-1] or len(chunks) < 4


def test_read_header_of_stored_pack(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    repo.add_blob(DATA, os.urandom(5000))
    repo.flush()
    (name,) = repo.storage.list("packs/")
    entries = read_header(repo.crypto, repo.storage, name, repo.storage.size(name))
    assert len(entries) == 1
    assert entries[0].raw_length == 5000
