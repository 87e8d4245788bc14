"""The index: where every blob lives (pack, offset, length), in memory and in index files.

    index  := seal(b"SMIX" version:u8 n_supersedes:u32le id[32]* n_packs:u32le pack*,
                   aad = b"I")
    pack   := pack_id[32] n_blobs:u32le entry*          entry: as in a pack header

Index files are written only after the packs they describe are durable, and are named by
the unkeyed BLAKE3 of their bytes. ``supersedes`` lets prune replace old index files with
a new one without an in-place update.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import blake3

from .crypto import Crypto
from .errors import DamagedObjectError
from .packs import _ENTRY, PackEntry

__all__ = ["BlobLocation", "Index", "decode_index", "encode_index", "index_name"]

_MAGIC = b"SMIX"
_VERSION = 1
_AAD = b"I"


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack_id: bytes
    entry: PackEntry


def index_name(index_id: bytes) -> str:
    return f"index/{index_id.hex()}"


def encode_index(crypto: Crypto, packs: dict[bytes, list[PackEntry]],
                 supersedes: Iterable[bytes] = ()) -> tuple[bytes, bytes]:
    """(index id, sealed bytes)."""
    sup = list(supersedes)
    out = bytearray(_MAGIC)
    out += struct.pack("<BI", _VERSION, len(sup))
    for s in sup:
        out += s
    out += struct.pack("<I", len(packs))
    for pack_id, entries in packs.items():
        out += pack_id + struct.pack("<I", len(entries))
        for e in entries:
            out += _ENTRY.pack(e.type, e.compression, e.offset, e.length, e.raw_length, e.id)
    sealed = crypto.seal(bytes(out), _AAD)
    return blake3.blake3(sealed).digest(), sealed


def decode_index(crypto: Crypto, sealed: bytes,
                 what: str) -> tuple[list[bytes], dict[bytes, list[PackEntry]]]:
    plain = crypto.open(sealed, _AAD, what)
    try:
        if plain[:4] != _MAGIC:
            raise ValueError("bad magic")
        version, nsup = struct.unpack_from("<BI", plain, 4)
        if version != _VERSION:
            raise ValueError(f"unsupported version {version}")
        pos = 9
        sup = [plain[pos + 32 * i: pos + 32 * (i + 1)] for i in range(nsup)]
        pos += 32 * nsup
        (npacks,) = struct.unpack_from("<I", plain, pos)
        pos += 4
        packs: dict[bytes, list[PackEntry]] = {}
        for _ in range(npacks):
            pack_id = plain[pos:pos + 32]
            (n,) = struct.unpack_from("<I", plain, pos + 32)
            pos += 36
            entries = []
            for _ in range(n):
                entries.append(PackEntry(*_ENTRY.unpack_from(plain, pos)))
                pos += _ENTRY.size
            packs[pack_id] = entries
        if pos != len(plain):
            raise ValueError("trailing bytes")
    except (ValueError, struct.error) as exc:
        raise DamagedObjectError(f"{what}: malformed index: {exc}", what) from None
    return sup, packs


class Index:
    """Thread-safe map of blob id -> location, plus which index file named which pack."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[bytes, BlobLocation] = {}
        self.packs: dict[bytes, list[PackEntry]] = {}
        self.files: dict[str, set[bytes]] = {}  # index object name -> pack ids it lists

    def add_pack(self, pack_id: bytes, entries: list[PackEntry], source: str | None) -> None:
        with self._lock:
            self.packs[pack_id] = entries
            for e in entries:
                self._blobs.setdefault(e.id, BlobLocation(pack_id, e))
            if source is not None:
                self.files.setdefault(source, set()).add(pack_id)

    def get(self, blob_id: bytes) -> BlobLocation | None:
        return self._blobs.get(blob_id)

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._blobs

    def __len__(self) -> int:
        return len(self._blobs)

    def blobs(self) -> Iterator[tuple[bytes, BlobLocation]]:
        with self._lock:
            items = list(self._blobs.items())
        return iter(items)
