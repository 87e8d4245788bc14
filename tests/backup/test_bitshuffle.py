"""Compression 2 (bit-shuffled zstd for tensors): the choice, round trips through packs and
the repository, damage, threads, and a reader written from docs/repository-format.md."""

from __future__ import annotations

import os
import random
import struct
import threading
from pathlib import Path

import pytest
import zstandard

from swarm_maint.backup import bitshuffle_codec
from swarm_maint.backup.crypto import Crypto, MasterKey
from swarm_maint.backup.errors import DamagedObjectError
from swarm_maint.backup.packs import (
    COMPRESSION_BITSHUFFLE_ZSTD,
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    DATA,
    PackEntry,
    blob_aad,
    compress_if_worth_it,
    decode_blob,
)
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.storage import LocalStorage

CRYPTO = Crypto(MasterKey.generate())
# a narrow spread of exponents, as in trained weights
_BF16_HIGH = bytes(0x3C + (b % 4) if b < 128 else 0xBC + (b % 4) for b in range(256))
_FP32_HIGH = bytes(0x3E + (b % 2) for b in range(256))


def bf16_like(n: int, seed: int = 1) -> bytes:
    """Little-endian bf16-like values: a random low byte, a narrow high byte."""
    raw = bytearray(random.Random(seed).randbytes(n))
    raw[1::2] = bytes(raw[1::2]).translate(_BF16_HIGH)
    return bytes(raw)


def fp32_like(n: int, seed: int = 2) -> bytes:
    raw = bytearray(random.Random(seed).randbytes(n))
    raw[3::4] = bytes(raw[3::4]).translate(_FP32_HIGH)
    return bytes(raw)


def text_like(n: int) -> bytes:
    rnd = random.Random(3)
    words = [b"loss", b"step", b"epoch", b"lr", b"grad_norm", b"tokens", b"eval"]
    out = bytearray()
    while len(out) < n:
        out += b'{"%s": %d, "%s": %.6f}\n' % (rnd.choice(words), rnd.randrange(10**6),
                                              rnd.choice(words), rnd.random())
    return bytes(out[:n])


@pytest.mark.parametrize("make", [bf16_like, fp32_like])
def test_tensors_are_bit_shuffled_smaller_than_plain_zstd(make: object) -> None:
    assert callable(make)
    data = make(1_000_003)
    comp, payload = compress_if_worth_it(data)
    assert comp == COMPRESSION_BITSHUFFLE_ZSTD
    plain = zstandard.ZstdCompressor(level=1).compress(data)
    assert len(payload) < 0.92 * len(plain)
    assert bitshuffle_codec.decompress(payload, len(data), "t") == data


def test_text_keeps_plain_zstd_and_random_data_stays_raw() -> None:
    assert compress_if_worth_it(text_like(600_000))[0] == COMPRESSION_ZSTD
    assert compress_if_worth_it(os.urandom(600_000))[0] == COMPRESSION_NONE
    small = bf16_like(20_000)  # too small for a sample: zstd alone
    assert compress_if_worth_it(small)[0] == COMPRESSION_ZSTD


@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("size", [32 * 1024 + 1, 262_144, 262_144 * 2 + 4, 900_001])
def test_any_length_and_alignment_round_trips_through_a_sealed_blob(
        size: int, offset: int) -> None:
    data = bf16_like(size + offset)[offset:]
    bid = CRYPTO.blob_id(data)
    comp, payload = compress_if_worth_it(data)
    assert comp == COMPRESSION_BITSHUFFLE_ZSTD
    sealed = CRYPTO.seal(payload, blob_aad(DATA, bid))
    entry = PackEntry(DATA, comp, 0, len(sealed), len(data), bid)
    assert decode_blob(CRYPTO, entry, sealed, "b") == data


def test_payloads_that_do_not_match_the_index_are_damaged_not_decoded() -> None:
    data = bf16_like(400_000)
    payload = bitshuffle_codec.compress(data)
    with pytest.raises(DamagedObjectError, match="claims 400000 bytes"):
        bitshuffle_codec.decompress(payload, len(data) + 1, "blob x")
    with pytest.raises(DamagedObjectError, match="claims"):
        bitshuffle_codec.decompress(payload[:-1], len(data), "blob x")
    with pytest.raises(DamagedObjectError, match="too short"):
        bitshuffle_codec.decompress(payload[:9], len(data), "blob x")
    broken = bytearray(payload)
    broken[16:20] = struct.pack("<I", len(payload) + 100)  # first block beyond the end
    with pytest.raises(DamagedObjectError, match="cannot decompress"):
        bitshuffle_codec.decompress(bytes(broken), len(data), "blob x")
    # bytes changed inside a zstd frame may still decode: the blob's id catches them
    # (a payload only gets here past the authenticated encryption, which a flip fails)
    bid = CRYPTO.blob_id(data)
    for at in (40, 1000, len(payload) // 2):
        broken = bytearray(payload)
        broken[at] ^= 0x10
        sealed = CRYPTO.seal(bytes(broken), blob_aad(DATA, bid))
        entry = PackEntry(DATA, COMPRESSION_BITSHUFFLE_ZSTD, 0, len(sealed), len(data), bid)
        with pytest.raises(DamagedObjectError):
            decode_blob(CRYPTO, entry, sealed, "b")
    # a sealed blob whose header entry claims compression 2 for a zstd frame
    frame = zstandard.ZstdCompressor().compress(data)
    sealed = CRYPTO.seal(frame, blob_aad(DATA, bid))
    entry = PackEntry(DATA, COMPRESSION_BITSHUFFLE_ZSTD, 0, len(sealed), len(data), bid)
    with pytest.raises(DamagedObjectError):
        decode_blob(CRYPTO, entry, sealed, "b")


def test_threads_compress_and_decompress_at_once() -> None:
    blobs = [bf16_like(300_000 + 4096 * i, seed=i) for i in range(8)]
    failures: list[BaseException] = []

    def work(data: bytes) -> None:
        try:
            for _ in range(20):
                payload = bitshuffle_codec.compress(data)
                assert bitshuffle_codec.decompress(payload, len(data), "t") == data
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_repository_stores_and_loads_tensor_chunks(tmp_path: Path) -> None:
    repo = Repository.init(LocalStorage(tmp_path / "repo"), "pw")
    data = bf16_like(3 << 20)
    ids = [repo.add_blob(DATA, c.data)[0] for c in repo.new_chunker().cut_buf(data)]
    repo.flush()
    stored = sum(repo.index.get(i).entry.length for i in ids)  # type: ignore[union-attr]
    assert stored < 0.75 * len(data)
    assert {repo.index.get(i).entry.compression for i in ids} == {  # type: ignore[union-attr]
        COMPRESSION_BITSHUFFLE_ZSTD}
    again = Repository.open(LocalStorage(tmp_path / "repo"), "pw")
    assert b"".join(again.load_blob(i) for i in ids) == data


# -- an independent reader of compression 2, written from docs/repository-format.md ----------

def _unshuffle_block(block: bytes) -> bytes:
    m = len(block) // 4
    if m % 8:
        return block
    row = m // 8
    # spread[b]: the 8 bits of b moved to bit 0 of 8 consecutive bytes
    spread = [sum(((b >> i) & 1) << (8 * i) for i in range(8)) for b in range(256)]
    out = bytearray(len(block))
    for j in range(4):
        for g in range(row):
            word = 0
            for k in range(8):
                word |= spread[block[(8 * j + k) * row + g]] << k
            for i, byte in enumerate(word.to_bytes(8, "little")):
                out[4 * (8 * g + i) + j] = byte
    out[4 * m:] = block[32 * row:]
    return bytes(out)


def read_compression_2(payload: bytes) -> bytes:
    version, versionlz, flags, typesize, nbytes, blocksize, cbytes = struct.unpack_from(
        "<BBBBIII", payload)
    assert (version, versionlz, typesize, cbytes) == (2, 1, 4, len(payload))
    if flags & 0x02:
        return payload[16:16 + nbytes]
    assert flags & 0x10 and flags >> 5 == 4
    nblocks = -(-nbytes // blocksize)
    starts = struct.unpack_from(f"<{nblocks}I", payload, 16)
    out = bytearray()
    for b, start in enumerate(starts):
        bsize = min(blocksize, nbytes - b * blocksize)
        (csize,) = struct.unpack_from("<I", payload, start)
        stream = payload[start + 4:start + 4 + csize]
        block = stream if csize == bsize else zstandard.ZstdDecompressor().decompress(
            stream, max_output_size=bsize)
        assert len(block) == bsize
        out += _unshuffle_block(block) if flags & 0x04 else block
    return bytes(out)


@pytest.mark.parametrize("size", [32_768, 40_004, 262_144 + 37, 262_144 + 32 * 11])
def test_the_documented_format_is_enough_to_read_compression_2(size: int) -> None:
    for data in (bf16_like(size), fp32_like(size)):
        assert read_compression_2(bitshuffle_codec.compress(data)) == data
    # tensors then noise: the last block's stream is stored raw (csize == bsize)
    mixed = bf16_like(600_000)[:300_000] + os.urandom(300_000)
    payload = bitshuffle_codec.compress(mixed)
    last = struct.unpack_from("<3I", payload, 16)[2]
    assert struct.unpack_from("<I", payload, last)[0] == 600_000 - 2 * 262_144
    assert read_compression_2(payload) == mixed
    # a chunk blosc stored whole (nothing to gain): the flag the document names
    noise = os.urandom(size)
    payload = bitshuffle_codec.compress(noise)
    assert payload[2] & 0x02
    assert read_compression_2(payload) == noise


def test_verify_prune_and_restore_handle_bit_shuffled_chunks(tmp_path: Path) -> None:
    from swarm_maint.backup.backup import run_backup
    from swarm_maint.backup.packs import pack_name
    from swarm_maint.backup.prune import prune
    from swarm_maint.backup.restore import restore
    from swarm_maint.backup.retention import forget
    from swarm_maint.backup.verify import verify
    from tests.backup.test_backup_restore import under

    src = tmp_path / "src"
    src.mkdir()
    weights = bf16_like(6 << 20)
    (src / "model.safetensors").write_bytes(weights)
    (src / "old.safetensors").write_bytes(fp32_like(4 << 20))
    repo = Repository.init(LocalStorage(tmp_path / "repo"), "pw")
    run_backup(repo, [src])
    (src / "old.safetensors").unlink()  # its chunks become garbage once forgotten
    tuned = bytearray(weights)
    tuned[2 << 20:3 << 20] = bf16_like(1 << 20, seed=9)
    (src / "model.safetensors").write_bytes(bytes(tuned))
    last = run_backup(repo, [src]).snapshot_id
    assert any(loc.entry.compression == COMPRESSION_BITSHUFFLE_ZSTD
               for _bid, loc in repo.index.blobs())
    forget(repo, keep_last=1)
    res = prune(repo, repack_threshold=1.0, grace_seconds=0)
    assert res.blobs_removed > 0 and res.packs_repacked > 0
    again = Repository.open(LocalStorage(tmp_path / "repo"), "pw")
    report = verify(again, read_data=True)
    assert report.ok, report.lines()
    restore(again, last, str(tmp_path / "out"))
    assert (under(tmp_path / "out", src) / "model.safetensors").read_bytes() == bytes(tuned)
    # a flipped byte inside a bit-shuffled chunk is found by a full verify
    bid, loc = next((b, loc) for b, loc in again.index.blobs()
                    if loc.entry.compression == COMPRESSION_BITSHUFFLE_ZSTD)
    path = tmp_path / "repo" / pack_name(loc.pack_id)
    raw = bytearray(path.read_bytes())
    raw[loc.entry.offset + loc.entry.length // 2] ^= 0x20
    os.chmod(path, 0o644)
    path.write_bytes(bytes(raw))
    damaged = verify(Repository.open(LocalStorage(tmp_path / "repo"), "pw"), read_data=True)
    assert not damaged.ok
    assert bid.hex() in "\n".join(damaged.lines())
