"""Pack files: many encrypted blobs followed by an encrypted header that lists them.

    pack   := blob* header_sealed header_length:u32le
    blob   := seal(payload, aad = b"B" || type || id)
              payload: raw, a zstd frame, or a bit-shuffled Blosc1 chunk (tensors)
    header := b"SMPK" version:u8 count:u32le entry*
    entry  := type:u8 compression:u8 offset:u64le length:u32le raw_length:u32le id[32]

A pack describes itself, so the index can always be rebuilt from the packs alone. The
pack's name is the unkeyed BLAKE3 of its bytes, so storage damage is found without keys.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import blake3

from . import bitshuffle_codec
from .crypto import NONCE_SIZE, TAG_SIZE, Crypto
from .direct_io import AlignedBuffer
from .errors import DamagedObjectError
from .storage import Storage

if TYPE_CHECKING:
    import zstandard

__all__ = [
    "COMPRESSION_BITSHUFFLE_ZSTD",
    "COMPRESSION_NONE",
    "COMPRESSION_ZSTD",
    "DATA",
    "PACK_BUFFER",
    "PACK_TARGET",
    "TREE",
    "PackEntry",
    "PackWriter",
    "blob_aad",
    "check_blobs",
    "compress_if_worth_it",
    "decode_blob",
    "pack_buffer_size",
    "pack_id_of",
    "pack_name",
    "parse_header",
    "read_header",
    "whole_pack_header",
]

DATA = 0
TREE = 1
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
COMPRESSION_BITSHUFFLE_ZSTD = 2
_MAGIC = b"SMPK"
_VERSION = 1
_ENTRY = struct.Struct("<BBQII32s")
_HEADER_AAD = b"H"
_SAMPLE = 16 * 1024
_LARGE_BLOB = 256 << 10
_MAX_RAW = 64 << 20  # sanity bound on one blob when reading a header
# a pack is closed once it holds PACK_TARGET bytes, so its buffer needs room for one more
# blob of up to the largest chunk, plus the header; larger blobs get a buffer of their own.
# 8 MiB rather than 12 or 16: up to three are in memory during a backup (one filling, one
# being written, one full and waiting for the writer). With 2 MiB reads this took the
# benchmark's initial backup from 143-149 to 120-128 MiB peak RSS, in the same time
PACK_TARGET = 8 << 20
PACK_BUFFER = PACK_TARGET + (8 << 20) + (1 << 20)
_HEADER_ROOM = 1 << 20


class PackEntry(NamedTuple):
    type: int
    compression: int
    offset: int
    length: int  # stored (sealed) length
    raw_length: int
    id: bytes


def pack_name(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"


def pack_id_of(name: str) -> bytes | None:
    """The id a stored pack name stands for; None for a file that is no pack's."""
    try:
        pid = bytes.fromhex(name.rsplit("/", 1)[-1])
    except ValueError:
        return None
    return pid if len(pid) == 32 and pack_name(pid) == name else None


def blob_aad(kind: int, blob_id: bytes) -> bytes:
    return b"B" + bytes([kind]) + blob_id


_local = threading.local()


# zstandard is imported where it is first needed, not with this module: a backup starts
# reading before it stores a new blob (the import is ~9 ms of a cold start, all of it
# holding the GIL that the scan and the repository's opening wait for)


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread and level: building one costs more than a small blob."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "zstd", None)
    if cache is None:
        cache = _local.zstd = {}
    comp = cache.get(level)
    if comp is None:
        import zstandard

        comp = cache[level] = zstandard.ZstdCompressor(level=level)
    return comp


def pack_buffer_size(first_blob: int) -> int:
    """Capacity of a pack buffer whose first blob is ``first_blob`` sealed bytes."""
    return max(PACK_BUFFER, first_blob + _HEADER_ROOM)


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        import zstandard

        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def compress_if_worth_it(
    data: bytes | memoryview, level: int | None = None
) -> tuple[int, bytes | memoryview]:
    """(compression, payload). A 16 KiB sample decides cheaply, compressed both ways:
    tensors, whose floats' sign and exponent bits are predictable, are bit-shuffled before
    zstd; text and JSON get plain zstd; random-looking data is stored raw. Small blobs
    get zstd level 3, large ones level 1 (a larger level buys little on large blobs)."""
    n = len(data)
    if n < 64:
        return COMPRESSION_NONE, data
    if n > 2 * _SAMPLE:
        sample = memoryview(data)[:_SAMPLE]
        plain = len(_compressor(1).compress(sample))
        shuffled = len(bitshuffle_codec.compress(sample))
        if min(plain, shuffled) > 0.92 * _SAMPLE:
            return COMPRESSION_NONE, data
        if shuffled < plain:
            packed = bitshuffle_codec.compress(data)
            if len(packed) >= 0.97 * n:
                return COMPRESSION_NONE, data
            return COMPRESSION_BITSHUFFLE_ZSTD, packed
    if level is None:
        level = 3 if n < _LARGE_BLOB else 1
    packed = _compressor(level).compress(data)
    if len(packed) >= 0.97 * n:
        return COMPRESSION_NONE, data
    return COMPRESSION_ZSTD, packed


def decode_blob(crypto: Crypto, entry: PackEntry, sealed: bytes | memoryview,
                what: str) -> bytes:
    """Decrypt, decompress and check the id of one blob."""
    payload = crypto.open(sealed, blob_aad(entry.type, entry.id), what)
    if entry.compression == COMPRESSION_ZSTD:
        import zstandard

        try:
            data = _decompressor().decompress(payload, max_output_size=entry.raw_length)
        except zstandard.ZstdError as exc:
            raise DamagedObjectError(f"{what}: cannot decompress: {exc}", what) from None
    elif entry.compression == COMPRESSION_BITSHUFFLE_ZSTD:
        data = bitshuffle_codec.decompress(payload, entry.raw_length, what)
    elif entry.compression == COMPRESSION_NONE:
        data = payload
    else:
        raise DamagedObjectError(f"{what}: unknown compression {entry.compression}", what)
    if len(data) != entry.raw_length or crypto.blob_id(data) != entry.id:
        raise DamagedObjectError(f"{what}: content does not match its id", what)
    return data


class PackWriter:
    """Lays out one pack in a page-aligned buffer, so it can be written with direct I/O.

    Space is handed out under the repository's lock (``reserve``) and filled outside it
    (``seal_at``), so several threads encrypt into the same pack at once, straight into
    its buffer. ``busy`` counts reservations not yet filled; a pack is only finished
    when it is zero."""

    def __init__(self, crypto: Crypto, buf: AlignedBuffer | None = None) -> None:
        self._crypto = crypto
        self.buf = buf if buf is not None else AlignedBuffer(PACK_BUFFER)
        self.buf.n = 0
        self.entries: list[PackEntry] = []
        self.busy = 0
        self.closed = False

    def __len__(self) -> int:
        return self.buf.n

    def fits(self, sealed_length: int) -> bool:
        return self.buf.n + sealed_length <= self.buf.capacity - _HEADER_ROOM

    def reserve(self, sealed_length: int) -> int:
        """Offset of ``sealed_length`` bytes set aside; the caller checked ``fits``."""
        off = self.buf.n
        self.buf.n = off + sealed_length
        self.busy += 1
        return off

    def seal_at(self, offset: int, kind: int, blob_id: bytes, compression: int,
                payload: bytes | memoryview, raw_length: int) -> PackEntry:
        """Encrypt ``payload`` into the space reserved at ``offset``."""
        length = len(payload) + NONCE_SIZE + TAG_SIZE
        with self.buf.view[offset:offset + length] as dst:
            self._crypto.seal_into(payload, blob_aad(kind, blob_id), dst)
        entry = PackEntry(kind, compression, offset, length, raw_length, blob_id)
        self.entries.append(entry)  # list.append is atomic
        return entry

    def add(self, kind: int, blob_id: bytes, compression: int, sealed: bytes | memoryview,
            raw_length: int) -> PackEntry:
        """Copy in a blob sealed elsewhere (repacking); single-threaded use."""
        entry = PackEntry(kind, compression, self.buf.append(sealed), len(sealed),
                          raw_length, blob_id)
        self.entries.append(entry)
        return entry

    def finish(self) -> tuple[bytes, memoryview]:
        """(pack id, pack bytes) with the header appended: a view of the buffer, valid
        until the buffer is reused."""
        self.entries.sort(key=lambda e: e.offset)
        header = bytearray(_MAGIC)
        header += struct.pack("<BI", _VERSION, len(self.entries))
        for e in self.entries:
            header += _ENTRY.pack(e.type, e.compression, e.offset, e.length, e.raw_length, e.id)
        sealed = self._crypto.seal(bytes(header), _HEADER_AAD)
        self.buf.append(sealed)
        self.buf.append(struct.pack("<I", len(sealed)))
        data = self.buf.data()
        return blake3.blake3(data).digest(), data


def parse_header(crypto: Crypto, sealed: bytes, pack_size: int, what: str) -> list[PackEntry]:
    plain = crypto.open(sealed, _HEADER_AAD, f"{what} header")
    if plain[:4] != _MAGIC or len(plain) < 9:
        raise DamagedObjectError(f"{what}: bad header magic", what)
    version, count = struct.unpack_from("<BI", plain, 4)
    if version != _VERSION:
        raise DamagedObjectError(f"{what}: unsupported pack version {version}", what)
    if len(plain) != 9 + count * _ENTRY.size:
        raise DamagedObjectError(f"{what}: header length does not match its count", what)
    entries = []
    data_end = pack_size - len(sealed) - 4
    for i in range(count):
        t, c, off, length, raw, bid = _ENTRY.unpack_from(plain, 9 + i * _ENTRY.size)
        if off + length > data_end or raw > _MAX_RAW or t not in (DATA, TREE):
            raise DamagedObjectError(f"{what}: header entry {i} out of bounds", what)
        entries.append(PackEntry(t, c, off, length, raw, bid))
    return entries


def _header_start(size: int, tail: bytes, name: str) -> int:
    """Where the sealed header of a ``size``-byte pack starts, from its last 4 bytes."""
    hlen: int = struct.unpack("<I", tail)[0]
    if hlen > size - 4 or hlen > 64 << 20:
        raise DamagedObjectError(f"{name}: header length {hlen} out of bounds", name)
    return size - 4 - hlen


def read_header(crypto: Crypto, storage: Storage, name: str, size: int) -> list[PackEntry]:
    """Read and parse the header of a stored pack: two small range reads."""
    if size < 4 + 28:
        raise DamagedObjectError(f"{name}: too short to be a pack", name)
    start = _header_start(size, storage.read_range(name, size - 4, 4), name)
    sealed = storage.read_range(name, start, size - 4 - start)
    return parse_header(crypto, sealed, size, name)


def whole_pack_header(crypto: Crypto, data: bytes, name: str) -> list[PackEntry]:
    """Parse the header of a pack read whole into memory."""
    size = len(data)
    if size < 4 + 28:
        raise DamagedObjectError(f"{name}: too short to be a pack", name)
    start = _header_start(size, data[size - 4:], name)
    return parse_header(crypto, data[start:size - 4], size, name)


def check_blobs(crypto: Crypto, data: bytes, entries: Iterable[PackEntry], name: str
                ) -> Iterator[tuple[PackEntry, bytes, DamagedObjectError | None]]:
    """Each entry's sealed bytes in ``data`` (a pack read whole), decoded to check them:
    with None, or with why they do not decode to content matching the entry's id."""
    for e in entries:
        sealed = data[e.offset:e.offset + e.length]
        try:
            decode_blob(crypto, e, sealed, f"{name} blob {e.id.hex()}")
        except DamagedObjectError as exc:
            yield e, sealed, exc
        else:
            yield e, sealed, None
