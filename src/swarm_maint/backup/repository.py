"""A repository: config, keys, packs, index files and snapshots on a write-once Storage.

Write order gives crash safety: a pack is durable before an index file names it, and an
index file is durable before a snapshot refers to what it lists. A crash leaves at most
packs no index names yet; ``recover_unindexed_packs`` adopts them from their own headers,
so the next backup reuses every blob that reached the disk.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import blake3
from pyfastcdc import FastCDC

from .crypto import NONCE_SIZE, TAG_SIZE, Crypto, MasterKey, unwrap_key, wrap_key
from .direct_io import AlignedBuffer
from .errors import (
    DamagedObjectError,
    RepositoryError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    WrongPasswordError,
)
from .index import ENTRY_SIZE, Index, decode_index_raw, encode_index, index_name
from .packs import (
    PACK_TARGET,
    PackEntry,
    PackWriter,
    compress_if_worth_it,
    decode_blob,
    pack_buffer_size,
    pack_id_of,
    pack_name,
)
from .packs import read_header as read_pack_header
from .storage import Storage

__all__ = ["PACK_TARGET", "ChunkerParams", "Repository", "is_object_name"]

_OBJECT_NAME = re.compile(r"[a-z]+/[0-9a-f]{64}")

_DIRECT_READ_MIN = 256 << 10  # blobs at least this large are read around the page cache
INDEX_EVERY = 16  # packs; bounds what a crash can leave unindexed
# full packs handed to the background writer at once; whoever fills one more waits.
# One already overlaps nearly all the waiting; each more holds another pack buffer
STORES_AHEAD = 1


class ChunkerParams(NamedTuple):
    min_size: int = 512 << 10
    avg_size: int = 1 << 20
    max_size: int = 8 << 20


class Repository:
    def __init__(self, storage: Storage, key: MasterKey, config: dict[str, Any]) -> None:
        self.storage = storage
        self.key = key
        self.crypto = Crypto(key)
        self.config = config
        self.id: str = config["id"]
        ch = config["chunker"]
        self.chunker_params = ChunkerParams(int(ch["min_size"]), int(ch["avg_size"]),
                                            int(ch["max_size"]))
        self.index = Index()
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._writer: PackWriter | None = None
        self._spare: list[AlignedBuffer] = []  # pack buffers kept for reuse (pages stay mapped)
        self._filling = 0  # packs closed or open with reservations not yet stored
        self._settled = threading.Condition(self._lock)
        self._tls = threading.local()  # per-thread read buffer for direct pack reads
        self._unindexed: dict[bytes, list[PackEntry]] = {}
        self._index_lock = threading.Lock()
        self._store_pool: ThreadPoolExecutor | None = None
        self._store_slots = threading.BoundedSemaphore(STORES_AHEAD)
        self._store_error: BaseException | None = None
        self.bytes_added = 0  # sealed bytes this session wrote into packs

    # -- creation and opening ---------------------------------------------------------

    @classmethod
    def init(cls, storage: Storage, password: str,
             chunker: ChunkerParams | None = None) -> Repository:
        if storage.exists("config"):
            raise RepositoryExistsError(f"{storage.location()}: a repository already exists")
        if not password:
            raise RepositoryError("refusing an empty password")
        if not storage.is_empty():
            # its files would be mixed with the repository's, and prune deletes what it
            # does not know
            raise RepositoryExistsError(
                f"{storage.location()}: not empty and not a repository; a repository is "
                "created only in a new or empty directory")
        key = MasterKey.generate()
        ch = chunker or ChunkerParams()
        config: dict[str, Any] = {
            "version": 1,
            "id": secrets.token_hex(32),
            "created": time.time(),
            "chunker": {"algorithm": "fastcdc2020", "min_size": ch.min_size,
                        "avg_size": ch.avg_size, "max_size": ch.max_size},
            "blob_id": "blake3-keyed",
            "encryption": "aes-256-gcm",
            "compression": "zstd",
        }
        body = json.dumps(config, sort_keys=True).encode()
        config["mac"] = Crypto(key).mac(body)
        # key first: a config without a key would be a repository nobody can open
        key_raw = wrap_key(key, password)
        storage.write(f"keys/{blake3.blake3(key_raw).hexdigest()}", key_raw)
        storage.write("config", json.dumps(config, sort_keys=True, indent=1).encode())
        return cls(storage, key, config)

    @classmethod
    def open(cls, storage: Storage, password: str, *,
             derived: Mapping[str, bytes] | None = None) -> Repository:
        """Open with ``password``; ``derived`` maps key objects to the key already derived
        for them from it (kdf.derive_first_key)."""
        try:
            raw = storage.read("config")
        except FileNotFoundError:
            raise RepositoryNotFoundError(
                f"{storage.location()}: no repository here (run `swarm-maint backup init`)"
            ) from None
        try:
            config = json.loads(raw)
            mac = config.pop("mac")
        except (ValueError, KeyError, TypeError):
            raise DamagedObjectError("config: not a swarm-maint repository config",
                                     "config") from None
        key = None
        names = storage.list("keys/")
        damaged: list[str] = []
        for name in names:
            try:
                key = unwrap_key(storage.read(name), password, (derived or {}).get(name))
                break
            except WrongPasswordError:
                continue
            except (DamagedObjectError, OSError):
                damaged.append(name)  # one damaged key object must not hide the others
        if key is None:
            where = storage.location()
            if not names:
                raise DamagedObjectError(f"{where}: no key objects in keys/: the repository "
                                         "cannot be opened with any password", "keys/")
            if len(damaged) == len(names):
                raise DamagedObjectError(f"{where}: every key object is damaged "
                                         f"({', '.join(damaged)})", damaged[0])
            raise WrongPasswordError(
                f"{where}: wrong password (no key of this repository opens with it)")
        body = json.dumps(config, sort_keys=True).encode()
        if not secrets.compare_digest(Crypto(key).mac(body), str(mac)):
            raise DamagedObjectError("config: authentication failed (tampered)", "config")
        repo = cls(storage, key, config)
        repo.load_index()
        return repo

    def add_password(self, password: str) -> str:
        if not password:
            raise RepositoryError("refusing an empty password")
        raw = wrap_key(self.key, password)
        name = f"keys/{blake3.blake3(raw).hexdigest()}"
        self.storage.write(name, raw)
        return name

    # -- index --------------------------------------------------------------------------

    def load_index(self) -> list[str]:
        """Read every index file; returns the names of damaged ones (skipped)."""
        self.index = Index()
        superseded: set[str] = set()
        decoded: dict[str, dict[bytes, bytes]] = {}
        damaged = []
        for name in self.object_names("index"):
            try:
                sup, packs = decode_index_raw(self.crypto, self.storage.read(name), name)
            except (DamagedObjectError, FileNotFoundError):
                damaged.append(name)
                continue
            superseded.update(index_name(s) for s in sup)
            decoded[name] = packs
        live = {n: p for n, p in decoded.items() if n not in superseded}
        self.index.reserve(sum(len(raw) for p in live.values() for raw in p.values())
                           // ENTRY_SIZE)
        for name, packs in live.items():
            for pack_id, raw in packs.items():
                self.index.add_pack_raw(pack_id, raw, name)
        return damaged

    def recover_unindexed_packs(self) -> int:
        """Adopt packs that a crash left without an index file; returns how many."""
        known = {pack_name(p) for p in self.index.packs}
        found: dict[bytes, list[PackEntry]] = {}
        for name in self.storage.list("packs/"):
            pid = pack_id_of(name)
            if name in known or pid is None:
                continue
            try:
                entries = read_pack_header(self.crypto, self.storage, name,
                                           self.storage.size(name))
            except (DamagedObjectError, FileNotFoundError, OSError):
                continue  # verify reports it; a damaged orphan adds nothing
            found[pid] = entries
        if found:
            for pack_id, entries in found.items():
                self.index.add_pack(pack_id, entries, None)
            self._write_index(found)
        return len(found)

    def replace_index(self, packs: Mapping[bytes, list[PackEntry] | bytes],
                      old_files: list[str],
                      tick: Callable[[str, int, int], None] | None = None) -> None:
        """One new index file listing ``packs`` that supersedes ``old_files``, which are
        then deleted (prune and repair; the packs must be durable already). A crash
        between the two leaves superseded files that readers ignore."""
        old_files = [n for n in old_files if is_object_name(n)]  # never others'
        sup = [bytes.fromhex(n.rsplit("/", 1)[1]) for n in old_files]
        new_index = self._write_index(packs, supersedes=sup)
        for i, name in enumerate(old_files):
            if tick is not None:
                tick("delete-index", i, len(old_files))
            if name != new_index:
                self.storage.delete(name)

    def _write_index(self, packs: Mapping[bytes, list[PackEntry] | bytes],
                     supersedes: Iterable[bytes] = ()) -> str:
        """Write an index file of ``packs`` (entries as a list, or packed) and add them
        to the index."""
        index_id, sealed = encode_index(self.crypto, packs, supersedes)
        name = index_name(index_id)
        self.storage.write(name, sealed)
        del sealed
        for pack_id, entries in packs.items():
            if isinstance(entries, bytes):
                self.index.add_pack_raw(pack_id, entries, name)
            else:
                self.index.add_pack(pack_id, entries, name)
        return name

    # -- blobs --------------------------------------------------------------------------

    def new_chunker(self) -> FastCDC:
        p = self.chunker_params
        return FastCDC(p.avg_size, min_size=p.min_size, max_size=p.max_size,
                       seed=self.key.chunker_seed)

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return self.crypto.blob_id(data)

    def has_blob(self, blob_id: bytes) -> bool:
        return blob_id in self.index or blob_id in self._pending

    def add_blob(self, kind: int, data: bytes | memoryview,
                 blob_id: bytes | None = None) -> tuple[bytes, int]:
        """Store ``data`` unless the repository has it; returns (id, sealed bytes added).

        Safe from several threads: compression and encryption run outside the lock, the
        encryption straight into the pack's buffer.
        """
        bid = blob_id if blob_id is not None else self.crypto.blob_id(data)
        self._raise_store_error()
        with self._lock:
            if bid in self.index or bid in self._pending:
                return bid, 0
            self._pending.add(bid)
        compression, payload = compress_if_worth_it(data)
        length = len(payload) + NONCE_SIZE + TAG_SIZE
        closed: PackWriter | None = None
        with self._lock:
            writer = self._writer
            if writer is not None and not writer.fits(length):
                closed = self._close_locked(writer)
                writer = None
            if writer is None:
                writer = self._writer = self._new_writer_locked(length)
            offset = writer.reserve(length)
            self.bytes_added += length
            if len(writer) >= PACK_TARGET:
                self._close_locked(writer)  # busy: whoever fills it last stores it
        if closed is not None:
            self._store_later(closed)
        try:
            writer.seal_at(offset, kind, bid, compression, payload, len(data))
        finally:
            with self._lock:
                writer.busy -= 1
                ready = writer.closed and writer.busy == 0
        if ready:
            self._store_later(writer)
        return bid, length

    def _store_later(self, writer: PackWriter) -> None:
        """Store a full pack from a background thread: the thread that filled it goes
        back to compressing and encrypting instead of waiting for the disk (on the
        benchmark VM those waits were a quarter of an all-new backup's sealing time)."""
        self._store_slots.acquire()
        try:
            with self._lock:
                if self._store_pool is None:
                    self._store_pool = ThreadPoolExecutor(1, thread_name_prefix="pack-store")
                pool = self._store_pool
            pool.submit(self._store_in_background, writer)
        except BaseException:
            self._store_slots.release()
            raise

    def _store_in_background(self, writer: PackWriter) -> None:
        try:
            self._store_pack(writer)
        except BaseException as exc:  # raised by the next add_blob or flush
            with self._lock:
                if self._store_error is None:
                    self._store_error = exc
        finally:
            self._store_slots.release()

    def _raise_store_error(self) -> None:
        err = self._store_error
        if err is not None:
            raise err

    def _new_writer_locked(self, length: int) -> PackWriter:
        need = pack_buffer_size(length)
        buf = self._spare.pop() if self._spare else None
        if buf is None or buf.capacity < need:
            buf = AlignedBuffer(need)
        self._filling += 1
        return PackWriter(self.crypto, buf)

    def _close_locked(self, writer: PackWriter) -> PackWriter | None:
        """Mark ``writer`` closed; returns it when it can be stored now."""
        writer.closed = True
        if self._writer is writer:
            self._writer = None
        return writer if writer.busy == 0 else None

    def _store_pack(self, writer: PackWriter) -> None:
        try:
            if not writer.entries:
                return
            pack_id, data = writer.finish()
            try:
                self.storage.write(pack_name(pack_id), data)
            finally:
                data.release()
            entries = list(writer.entries)
            write_now: dict[bytes, list[PackEntry]] | None = None
            with self._lock:
                self.index.add_pack(pack_id, entries, None)
                self._pending.difference_update(e.id for e in entries)
                self._unindexed[pack_id] = entries
                if len(self._unindexed) >= INDEX_EVERY:
                    write_now, self._unindexed = self._unindexed, {}
            if write_now:
                with self._index_lock:
                    self._write_index(write_now)
        finally:
            with self._lock:
                if len(self._spare) < STORES_AHEAD:
                    self._spare.append(writer.buf)
                else:
                    writer.buf.close()
                self._filling -= 1
                self._settled.notify_all()

    def flush(self) -> None:
        """Write the open pack and an index file for every pack not yet indexed (after
        waiting for packs other threads are still filling or writing)."""
        with self._lock:
            writer = self._writer
            ready = self._close_locked(writer) if writer is not None else None
        if ready is not None:
            self._store_pack(ready)
        with self._lock:
            self._settled.wait_for(lambda: self._filling == 0)
            pool, self._store_pool = self._store_pool, None
        if pool is not None:
            pool.shutdown()  # idle but for its last release: every pack is stored
        with self._lock:
            err, self._store_error = self._store_error, None
            rest, self._unindexed = self._unindexed, {}
        try:
            if rest:  # what was stored stays usable, even after a failed store
                with self._index_lock:
                    self._write_index(rest)
        finally:
            if err is not None:
                raise err

    def release_buffers(self) -> None:
        """Unmap the spare pack buffers (after a backup; they are rebuilt on demand)."""
        with self._lock:
            spare, self._spare = self._spare, []
        for buf in spare:
            buf.close()

    def load_blob(self, blob_id: bytes) -> bytes:
        loc = self.index.get(blob_id)
        if loc is None:
            raise DamagedObjectError(f"blob {blob_id.hex()} is not in the index", blob_id.hex())
        name = pack_name(loc.pack_id)
        direct = getattr(self.storage, "read_range_direct", None)
        sealed: bytes | memoryview
        try:
            if direct is not None and loc.entry.length >= _DIRECT_READ_MIN:
                buf = getattr(self._tls, "buf", None)
                if buf is None:
                    buf = self._tls.buf = AlignedBuffer(loc.entry.length + 8192)
                sealed = direct(name, loc.entry.offset, loc.entry.length, buf)
            else:
                sealed = self.storage.read_range(name, loc.entry.offset, loc.entry.length)
        except FileNotFoundError:
            raise DamagedObjectError(f"{name}: pack missing (needed for blob "
                                     f"{blob_id.hex()})", name) from None
        return decode_blob(self.crypto, loc.entry, sealed, f"{name} blob {blob_id.hex()[:16]}")

    # -- JSON objects (snapshots) ---------------------------------------------------------

    def save_object(self, kind: str, obj: dict[str, Any]) -> str:
        sealed = self.crypto.seal(json.dumps(obj, sort_keys=True).encode(), kind.encode())
        oid = blake3.blake3(sealed).hexdigest()
        self.storage.write(f"{kind}/{oid}", sealed)
        return oid

    def load_object(self, kind: str, oid: str) -> dict[str, Any]:
        name = f"{kind}/{oid}"
        sealed = self.storage.read(name)
        if blake3.blake3(sealed).hexdigest() != oid:
            raise DamagedObjectError(f"{name}: content does not match its name", name)
        obj: dict[str, Any] = json.loads(self.crypto.open(sealed, kind.encode(), name))
        return obj

    def list_objects(self, kind: str) -> list[str]:
        """Ids of the ``kind`` objects (``snapshots``); a file there whose name no object
        can have (64 hex digits) is someone else's, and left out."""
        return [n.split("/", 1)[1] for n in self.object_names(kind)]

    def object_names(self, kind: str) -> list[str]:
        """Names of the ``kind`` objects (``index``, ``snapshots``): ``kind/<64 hex>``."""
        return [n for n in self.storage.list(f"{kind}/") if is_object_name(n)]


def is_object_name(name: str) -> bool:
    """``kind/<64 hex>``: a name an index file or snapshot can have, not someone else's."""
    return _OBJECT_NAME.fullmatch(name) is not None
