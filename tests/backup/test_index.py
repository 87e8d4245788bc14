"""The in-memory index against a plain dict model: lookups, first location wins, ids that
share their first 8 bytes, re-added packs, growth, readers beside a writer."""

from __future__ import annotations

import os
import random
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from swarm_maint.backup.index import (
    BlobLocation,
    Index,
    decode_index_raw,
    encode_index,
    pack_entries,
    unpack_entries,
)
from swarm_maint.backup.packs import DATA, TREE, PackEntry
from tests.backup.test_repository import CRYPTO


def _entry(i: int, blob_id: bytes) -> PackEntry:
    return PackEntry(DATA if i % 3 else TREE, i % 3, i * 4096, 1000 + i, 2000 + i, blob_id)


def _ids(draw_prefix: bytes, n: int, rng: random.Random) -> list[bytes]:
    """Ids that all begin with ``draw_prefix`` (a forced clash of the table's key)."""
    return [draw_prefix + rng.randbytes(32 - len(draw_prefix)) for _ in range(n)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=32, max_size=32),
                          st.lists(st.integers(0, 40), max_size=20)), max_size=30),
       st.integers(0, 2**32), st.booleans())
def test_matches_a_dict_model(packs: list[tuple[bytes, list[int]]], seed: int,
                              reserve: bool) -> None:
    rng = random.Random(seed)
    # a small id space (41 ids) so that blobs recur across packs; the ids share their
    # first 8 bytes in pairs, so every key lookup also has to tell clashing ids apart
    space = []
    for _ in range(21):
        space.extend(_ids(rng.randbytes(8), 2, rng))
    index = Index()
    if reserve:
        index.reserve(sum(len(p[1]) for p in packs))
    model: dict[bytes, BlobLocation] = {}
    model_packs: dict[bytes, list[PackEntry]] = {}
    for pack_id, picks in packs:
        if pack_id in model_packs:
            continue  # a pack id names one content
        entries = [_entry(i, space[k]) for i, k in enumerate(picks)]
        index.add_pack(pack_id, entries, "index/a")
        model_packs[pack_id] = entries
        for e in entries:
            model.setdefault(e.id, BlobLocation(pack_id, e))
    assert len(index) == len(model)
    for blob_id in space:
        assert index.get(blob_id) == model.get(blob_id)
        assert (blob_id in index) == (blob_id in model)
    assert dict(index.blobs()) == model
    assert dict(index.packs) == model_packs
    assert set(index.packs) == set(model_packs) and len(index.packs) == len(model_packs)
    assert index.files == ({"index/a": set(model_packs)} if model_packs else {})


def test_many_blobs_grow_the_table_and_all_stay_found() -> None:
    rng = random.Random(5)
    index = Index()
    want: dict[bytes, BlobLocation] = {}
    for _ in range(400):
        pack_id = rng.randbytes(32)
        base = [rng.randbytes(32) for _ in range(rng.randint(1, 60))]
        entries = [_entry(i, b) for i, b in enumerate(base)]
        index.add_pack(pack_id, entries, None)
        for e in entries:
            want.setdefault(e.id, BlobLocation(pack_id, e))
    clash_pack = rng.randbytes(32)  # ids that clash with earlier ones on their first 8 bytes
    clashing = [_entry(i, k[:8] + rng.randbytes(24)) for i, k in enumerate(list(want)[:50])]
    index.add_pack(clash_pack, clashing, None)
    for e in clashing:
        want[e.id] = BlobLocation(clash_pack, e)
    assert len(index) == len(want)
    for blob_id, loc in want.items():
        assert index.get(blob_id) == loc
    for _ in range(2000):
        assert rng.randbytes(32) not in index
    assert b"short" not in index and None not in index


def test_readded_pack_with_other_entries_is_consistent() -> None:
    index = Index()
    a, b, c = os.urandom(32), os.urandom(32), os.urandom(32)
    index.add_pack(b"p" * 32, [_entry(0, a), _entry(1, b)], "index/1")
    index.add_pack(b"p" * 32, [_entry(0, a), _entry(1, b)], "index/2")  # same: no change
    assert len(index) == 2 and index.files == {"index/1": {b"p" * 32}, "index/2": {b"p" * 32}}
    index.add_pack(b"p" * 32, [_entry(0, c)], None)  # only a damaged index does this
    assert len(index) == 1 and a not in index and index.get(c) == BlobLocation(
        b"p" * 32, _entry(0, c))


def test_raw_entries_round_trip_through_an_index_file() -> None:
    packs = {os.urandom(32): [_entry(i, os.urandom(32)) for i in range(n)] for n in (0, 1, 7)}
    _iid, sealed = encode_index(CRYPTO, packs, [])
    _sup, raw = decode_index_raw(CRYPTO, sealed, "i")
    assert {p: unpack_entries(r) for p, r in raw.items()} == packs
    assert all(pack_entries(packs[p]) == r for p, r in raw.items())
    index = Index()
    for p, r in raw.items():
        index.add_pack_raw(p, r, "i")
    assert len(index) == 8


def test_readers_beside_a_writer_never_miss_a_blob_added_before() -> None:
    index = Index()
    rng = random.Random(9)
    added: list[bytes] = []
    lock = threading.Lock()
    stop = threading.Event()
    misses: list[bytes] = []

    def reader() -> None:
        r = random.Random()
        while not stop.is_set():
            with lock:
                known = added[r.randrange(len(added))] if added else None
            if known is not None and index.get(known) is None:
                misses.append(known)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):  # many growths of the table while readers probe it
            entries = [_entry(i, rng.randbytes(32)) for i in range(rng.randint(1, 40))]
            index.add_pack(rng.randbytes(32), entries, None)
            with lock:
                added.extend(e.id for e in entries)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert misses == []
    assert all(b in index for b in added)


def test_memory_per_blob_stays_small() -> None:
    """A node's repository of 10 TB in 1 MiB chunks holds 10 M blobs: at the ~380 bytes
    a blob that a dict of entry objects took, a backup would need 3.8 GB for its index."""
    import tracemalloc

    rng = random.Random(3)
    files = []
    for _ in range(4):  # as loaded: index files decoded into packed entries per pack
        packs = {rng.randbytes(32): [_entry(i, rng.randbytes(32)) for i in range(16)]
                 for _ in range(2500)}
        files.append(decode_index_raw(CRYPTO, encode_index(CRYPTO, packs, [])[1], "i")[1])
    n = sum(len(r) for f in files for r in f.values()) // 50
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = Index()
        index.reserve(n)
        for f in files:
            for pid, raw in f.items():
                index.add_pack_raw(pid, raw, "index/x")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(index) == n == 160_000
    # the packed entries themselves (50 bytes a blob) were allocated before: what the
    # index adds is its table and its per-pack bookkeeping
    assert held / n < 48, held / n
    del files
