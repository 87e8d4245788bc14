"""The index: where every blob lives (pack, offset, length), in memory and in index files.

    index  := seal(b"SMIX" version:u8 n_supersedes:u32le id[32]* n_packs:u32le pack*,
                   aad = b"I")
    pack   := pack_id[32] n_blobs:u32le entry*          entry: as in a pack header

Index files are written only after the packs they describe are durable, and are named by
the unkeyed BLAKE3 of their bytes. ``supersedes`` lets prune replace old index files with
a new one without an in-place update.
"""

from __future__ import annotations

import array
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import blake3

from .crypto import SEAL_OVERHEAD, Crypto
from .errors import DamagedObjectError
from .packs import _ENTRY, PackEntry

__all__ = [
    "ENTRY_SIZE",
    "BlobBits",
    "BlobIds",
    "BlobLocation",
    "Index",
    "decode_index",
    "decode_index_raw",
    "encode_index",
    "index_name",
    "pack_entries",
    "unpack_entries",
]

_MAGIC = b"SMIX"
_VERSION = 1
_AAD = b"I"


class BlobLocation(NamedTuple):
    pack_id: bytes
    entry: PackEntry


def index_name(index_id: bytes) -> str:
    return f"index/{index_id.hex()}"


def encode_index(crypto: Crypto, packs: Mapping[bytes, list[PackEntry] | bytes],
                 supersedes: Iterable[bytes] = ()) -> tuple[bytes, bytearray]:
    """(index id, sealed bytes). A pack's entries are a list, or packed already
    (``pack_entries``, as ``Index.raw_entries`` keeps them)."""
    sup = list(supersedes)
    out = bytearray(_MAGIC)
    out += struct.pack("<BI", _VERSION, len(sup))
    for s in sup:
        out += s
    out += struct.pack("<I", len(packs))
    for pack_id, entries in packs.items():
        raw = entries if isinstance(entries, bytes) else pack_entries(entries)
        out += pack_id + struct.pack("<I", len(raw) // ENTRY_SIZE)
        out += raw
    sealed = bytearray(len(out) + SEAL_OVERHEAD)  # sealed in place: a large index is
    crypto.seal_into(out, _AAD, memoryview(sealed))  # held twice at most, not 3 times
    return blake3.blake3(sealed).digest(), sealed


def decode_index_raw(crypto: Crypto, sealed: bytes,
                     what: str) -> tuple[list[bytes], dict[bytes, bytes]]:
    """(superseded index ids, {pack id: its entries as stored, ``_ENTRY.size`` bytes
    each}): what ``Index.add_pack_raw`` takes, without an object per entry."""
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
        packs: dict[bytes, bytes] = {}
        for _ in range(npacks):
            pack_id = plain[pos:pos + 32]
            (n,) = struct.unpack_from("<I", plain, pos + 32)
            pos += 36
            raw = plain[pos:pos + n * _ENTRY.size]
            if len(raw) != n * _ENTRY.size:
                raise ValueError("truncated pack entries")
            packs[pack_id] = raw
            pos += len(raw)
        if pos != len(plain):
            raise ValueError("trailing bytes")
    except (ValueError, struct.error) as exc:
        raise DamagedObjectError(f"{what}: malformed index: {exc}", what) from None
    return sup, packs


def decode_index(crypto: Crypto, sealed: bytes,
                 what: str) -> tuple[list[bytes], dict[bytes, list[PackEntry]]]:
    sup, raw = decode_index_raw(crypto, sealed, what)
    return sup, {pid: unpack_entries(r) for pid, r in raw.items()}


def unpack_entries(raw: bytes) -> list[PackEntry]:
    return [PackEntry(*t) for t in _ENTRY.iter_unpack(raw)]


def pack_entries(entries: Iterable[PackEntry]) -> bytes:
    return b"".join(_ENTRY.pack(e.type, e.compression, e.offset, e.length, e.raw_length, e.id)
                    for e in entries)


# Blob lookup: an open-addressing hash table (linear probing) in two arrays, keyed by
# the first 8 bytes of the blob id, whose slots point at entries kept as packed bytes per
# pack. A dict of bytes ids to entry objects took ~380 bytes per blob (3.8 GB of RAM for
# 10 M blobs, a 10 TB repository of 1 MiB chunks); this takes ~80. Ids are keyed BLAKE3,
# so their low bits spread evenly; two ids sharing 8 bytes both stay in the table, told
# apart by the full id in the entry.
ENTRY_SIZE = _ENTRY.size
_ID_AT = ENTRY_SIZE - 32  # the id is an entry's last field
_ENTRY_BITS = 24  # slot value: pack number << 24 | entry number within the pack
_ENTRY_MASK = (1 << _ENTRY_BITS) - 1
_MAX_LOAD = 0.7


def _key(blob_id: bytes) -> int:
    return int.from_bytes(blob_id[:8], "little") or 1  # 0 marks an empty slot


class _Table(NamedTuple):
    keys: array.array[int]
    slots: array.array[int]
    mask: int


def _empty_table(capacity: int) -> _Table:
    size = 16
    while size * _MAX_LOAD < capacity:
        size *= 2
    return _Table(array.array("Q", bytes(8 * size)), array.array("Q", bytes(8 * size)),
                  size - 1)


class Index:
    """Thread-safe map of blob id -> location, plus which index file named which pack.
    Lookups take no lock: writers fill a slot's value before its key, and a table that
    grows is replaced whole."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pack_ids: list[bytes] = []  # pack number -> id
        self._pack_no: dict[bytes, int] = {}
        self._entries: list[bytes] = []  # pack number -> its packed entries
        self._table = _empty_table(0)
        self._count = 0  # distinct blob ids, one slot each
        self.files: dict[str, set[bytes]] = {}  # index object name -> pack ids it lists

    @property
    def packs(self) -> Mapping[bytes, list[PackEntry]]:
        """Pack id -> its entries, decoded when asked for. Made on each use: a view kept
        as an attribute would be a reference cycle, and a replaced index (10s of MB)
        would then wait for the cyclic garbage collector."""
        return _PackView(self)

    def reserve(self, blobs: int) -> None:
        """Size the table for ``blobs`` more blobs at once (loading an index)."""
        with self._lock:
            self._grow_to(self._count + blobs)

    def add_pack(self, pack_id: bytes, entries: list[PackEntry], source: str | None) -> None:
        self.add_pack_raw(pack_id, pack_entries(entries), source)

    def add_pack_raw(self, pack_id: bytes, raw: bytes, source: str | None) -> None:
        """Add a pack's entries (packed as in an index file); a blob already located
        elsewhere keeps its first location."""
        if len(raw) % ENTRY_SIZE:
            raise ValueError("packed entries of the wrong length")
        with self._lock:
            no = self._pack_no.get(pack_id)
            if no is None:
                no = len(self._entries)
                self._entries.append(raw)
                self._pack_ids.append(pack_id)
                self._pack_no[pack_id] = no
                self._insert_pack(no, raw)
            elif self._entries[no] != raw:
                # a pack is named by its content, so only a damaged index gets here
                self._entries[no] = raw
                self._rebuild()
            if source is not None:
                self.files.setdefault(source, set()).add(pack_id)

    def _insert_pack(self, no: int, raw: bytes) -> None:
        n = len(raw) // ENTRY_SIZE
        if n >= 1 << _ENTRY_BITS:
            raise ValueError("too many entries in one pack")
        self._grow_to(self._count + n)
        t = self._table
        keys, slots, mask = t.keys, t.slots, t.mask
        base = no << _ENTRY_BITS
        for i in range(n):
            off = i * ENTRY_SIZE + _ID_AT
            blob_id = raw[off:off + 32]
            key = _key(blob_id)
            j = key & mask
            while True:  # the first free slot of the probe, unless the id comes first
                k = keys[j]
                if not k:
                    slots[j] = base | i  # the value before the key: readers take no lock
                    keys[j] = key
                    self._count += 1
                    break
                if k == key and self._id_at(slots[j]) == blob_id:
                    break  # located already: the first location stays
                j = (j + 1) & mask

    def _grow_to(self, count: int) -> None:
        t = self._table
        if count <= (t.mask + 1) * _MAX_LOAD:
            return
        new = _empty_table(max(count, 2 * self._count))
        for key, slot in zip(t.keys, t.slots, strict=True):
            if key:
                j = key & new.mask
                while new.keys[j]:
                    j = (j + 1) & new.mask
                new.slots[j] = slot
                new.keys[j] = key
        self._table = new  # whole: a reader holds the old table or the new one

    def _rebuild(self) -> None:
        self._table = _empty_table(sum(len(r) for r in self._entries) // ENTRY_SIZE)
        self._count = 0
        for no, raw in enumerate(self._entries):
            self._insert_pack(no, raw)

    def _id_at(self, slot: int) -> bytes:
        raw = self._entries[slot >> _ENTRY_BITS]
        off = (slot & _ENTRY_MASK) * ENTRY_SIZE + _ID_AT
        return raw[off:off + 32]

    def _probe(self, t: _Table, blob_id: bytes) -> int:
        """Where ``blob_id`` sits in table ``t`` (the caller's, read once: a growing
        table is replaced whole), or -1."""
        keys, mask = t.keys, t.mask
        key = _key(blob_id)
        j = key & mask
        while True:
            k = keys[j]
            if not k:
                return -1
            if k == key and self._id_at(t.slots[j]) == blob_id:
                return j
            j = (j + 1) & mask

    def _find(self, blob_id: bytes) -> int:
        """The slot value of ``blob_id``, or -1."""
        t = self._table
        j = self._probe(t, blob_id)
        return -1 if j < 0 else t.slots[j]

    def _location(self, slot: int) -> BlobLocation:
        no = slot >> _ENTRY_BITS
        off = (slot & _ENTRY_MASK) * ENTRY_SIZE
        return BlobLocation(self._pack_ids[no],
                            PackEntry(*_ENTRY.unpack_from(self._entries[no], off)))

    def get(self, blob_id: bytes) -> BlobLocation | None:
        slot = self._find(blob_id)
        return None if slot < 0 else self._location(slot)

    def __contains__(self, blob_id: object) -> bool:
        return isinstance(blob_id, bytes) and len(blob_id) == 32 and self._find(blob_id) >= 0

    # Blob positions: a dense number for each blob, so that prune and repair can mark
    # the blobs in bitmaps (a bit each) instead of sets of ids (~100 bytes each).

    @property
    def positions(self) -> int:
        """Every blob's position is below this."""
        return self._table.mask + 1

    def position(self, blob_id: bytes) -> int:
        """The position of ``blob_id`` (-1: not in the index), valid until the index
        next changes."""
        return self._probe(self._table, blob_id)

    def id_at_position(self, position: int) -> bytes:
        t = self._table
        if not t.keys[position]:
            raise KeyError(position)
        return self._id_at(t.slots[position])

    def raw_entries(self, pack_id: bytes) -> bytes:
        """A pack's entries, packed (``pack_entries``)."""
        return self._entries[self._pack_no[pack_id]]

    def __len__(self) -> int:
        return self._count

    def blobs(self) -> Iterator[tuple[bytes, BlobLocation]]:
        with self._lock:
            t = self._table
            slots = [s for k, s in zip(t.keys, t.slots, strict=True) if k]
        for slot in slots:
            loc = self._location(slot)
            yield loc.entry.id, loc


class BlobBits:
    """A set of the index's blobs as a bitmap over their positions (``Index.position``),
    valid while the index does not change: a bit per blob where a set of ids took ~100
    bytes (1 GB for 10 M blobs)."""

    def __init__(self, positions: int) -> None:
        self._bits = bytearray((positions + 7) // 8)

    def add(self, position: int) -> bool:
        """Add ``position``; False when it was in already."""
        i, bit = position >> 3, 1 << (position & 7)
        byte = self._bits[i]
        if byte & bit:
            return False
        self._bits[i] = byte | bit
        return True

    def __contains__(self, position: int) -> bool:
        return bool(self._bits[position >> 3] & (1 << (position & 7)))

    def __len__(self) -> int:
        return int.from_bytes(self._bits, "little").bit_count()

    def first_not_in(self, other: BlobBits) -> int:
        """The lowest position in this set and not in ``other``, or -1."""
        rest = int.from_bytes(self._bits, "little") & ~int.from_bytes(other._bits, "little")
        return (rest & -rest).bit_length() - 1


class BlobIds:
    """A set of blob ids: a bit each (``bits``) for those in ``index``, the ids of the
    others (``others``: missing blobs, adopted packs), for marking every blob of a large
    repository in little memory. Valid while the index does not change."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self.bits = BlobBits(index.positions)
        self.others: set[bytes] = set()

    def add(self, blob_id: bytes) -> bool:
        """Add ``blob_id``; False when it was in already."""
        pos = self._index.position(blob_id)
        if pos >= 0:
            return self.bits.add(pos)
        if blob_id in self.others:
            return False
        self.others.add(blob_id)
        return True

    def __len__(self) -> int:
        return len(self.bits) + len(self.others)


class _PackView(Mapping[bytes, list[PackEntry]]):
    """``Index.packs``: pack id -> its entries, decoded when asked for."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def __getitem__(self, pack_id: bytes) -> list[PackEntry]:
        no = self._index._pack_no[pack_id]
        return unpack_entries(self._index._entries[no])

    def __contains__(self, pack_id: object) -> bool:
        return pack_id in self._index._pack_no

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._index._pack_ids))

    def __len__(self) -> int:
        return len(self._index._pack_ids)
