"""Pack files: many encrypted blobs followed by an encrypted header that lists them.

    pack   := blob* header_sealed header_length:u32le
    blob   := seal(payload, aad = b"B" || type || id)        payload: raw or zstd frame
    header := b"SMPK" version:u8 count:u32le entry*
    entry  := type:u8 compression:u8 offset:u64le length:u32le raw_length:u32le id[32]

A pack describes itself, so the index can always be rebuilt from the packs alone. The
pack's name is the unkeyed BLAKE3 of its bytes, so storage damage is found without keys.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import blake3
import zstandard

from .crypto import Crypto
from .errors import DamagedObjectError
from .storage import Storage

__all__ = [
    "COMPRESSION_NONE",
    "COMPRESSION_ZSTD",
    "DATA",
    "TREE",
    "PackEntry",
    "PackWriter",
    "blob_aad",
    "compress_if_worth_it",
    "decode_blob",
    "pack_name",
    "parse_header",
    "read_header",
]

DATA = 0
TREE = 1
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
_MAGIC = b"SMPK"
_VERSION = 1
_ENTRY = struct.Struct("<BBQII32s")
_HEADER_AAD = b"H"
_SAMPLE = 16 * 1024
_MAX_RAW = 64 << 20  # sanity bound on one blob when reading a header


@dataclass(frozen=True, slots=True)
class PackEntry:
    type: int
    compression: int
    offset: int
    length: int  # stored (sealed) length
    raw_length: int
    id: bytes


def pack_name(pack_id: bytes) -> str:
    h = pack_id.hex()
    return f"packs/{h[:2]}/{h}"


def blob_aad(kind: int, blob_id: bytes) -> bytes:
    return b"B" + bytes([kind]) + blob_id


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread and level: building one costs more than a small blob."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "zstd", None)
    if cache is None:
        cache = _local.zstd = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level)
    return comp


def compress_if_worth_it(
    data: bytes | memoryview, level: int = 3
) -> tuple[int, bytes | memoryview]:
    """(compression, payload). A 16 KiB sample at level 1 decides cheaply: tensors of
    random-looking floats are stored raw, text and JSON are compressed."""
    n = len(data)
    if n < 64:
        return COMPRESSION_NONE, data
    if n > 2 * _SAMPLE:
        probe = _compressor(1).compress(memoryview(data)[:_SAMPLE])
        if len(probe) > 0.92 * _SAMPLE:
            return COMPRESSION_NONE, data
    packed = _compressor(level).compress(data)
    if len(packed) >= 0.97 * n:
        return COMPRESSION_NONE, data
    return COMPRESSION_ZSTD, packed


def decode_blob(crypto: Crypto, entry: PackEntry, sealed: bytes, what: str) -> bytes:
    """Decrypt, decompress and check the id of one blob."""
    payload = crypto.open(sealed, blob_aad(entry.type, entry.id), what)
    if entry.compression == COMPRESSION_ZSTD:
        try:
            data = zstandard.ZstdDecompressor().decompress(
                payload, max_output_size=entry.raw_length
            )
        except zstandard.ZstdError as exc:
            raise DamagedObjectError(f"{what}: cannot decompress: {exc}", what) from None
    elif entry.compression == COMPRESSION_NONE:
        data = payload
    else:
        raise DamagedObjectError(f"{what}: unknown compression {entry.compression}", what)
    if len(data) != entry.raw_length or crypto.blob_id(data) != entry.id:
        raise DamagedObjectError(f"{what}: content does not match its id", what)
    return data


class PackWriter:
    """Accumulates sealed blobs in memory until the pack is finished."""

    def __init__(self, crypto: Crypto) -> None:
        self._crypto = crypto
        self._buf = bytearray()
        self.entries: list[PackEntry] = []

    def __len__(self) -> int:
        return len(self._buf)

    def add(self, kind: int, blob_id: bytes, compression: int, sealed: bytes,
            raw_length: int) -> PackEntry:
        entry = PackEntry(kind, compression, len(self._buf), len(sealed), raw_length, blob_id)
        self._buf += sealed
        self.entries.append(entry)
        return entry

    def finish(self) -> tuple[bytes, bytearray]:
        """(pack id, pack bytes) with the header appended (the buffer itself: no copy)."""
        header = bytearray(_MAGIC)
        header += struct.pack("<BI", _VERSION, len(self.entries))
        for e in self.entries:
            header += _ENTRY.pack(e.type, e.compression, e.offset, e.length, e.raw_length, e.id)
        sealed = self._crypto.seal(bytes(header), _HEADER_AAD)
        self._buf += sealed
        self._buf += struct.pack("<I", len(sealed))
        data, self._buf = self._buf, bytearray()
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


def read_header(crypto: Crypto, storage: Storage, name: str, size: int) -> list[PackEntry]:
    """Read and parse the header of a stored pack: two small range reads."""
    if size < 4 + 28:
        raise DamagedObjectError(f"{name}: too short to be a pack", name)
    (hlen,) = struct.unpack("<I", storage.read_range(name, size - 4, 4))
    if hlen > size - 4 or hlen > 64 << 20:
        raise DamagedObjectError(f"{name}: header length {hlen} out of bounds", name)
    sealed = storage.read_range(name, size - 4 - hlen, hlen)
    return parse_header(crypto, sealed, size, name)
