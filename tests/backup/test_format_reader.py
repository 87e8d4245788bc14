"""An independent reader of swarm-maint backup repositories, written only from
docs/repository-format.md, run against repositories that the real CLI wrote.

It proves the document is enough to read a repository without swarm-maint: open it with a
password, authenticate the config, check every object name, load the index (following
prune's superseding index files), decrypt the snapshots, walk their trees, decode every
blob (compression 0, 1 and 2) and rebuild each file with its metadata; it also rebuilds the
index from the pack headers alone. The reader below imports nothing from swarm_maint (the
compression 2 decoder it reuses was written from the same document).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import socket
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import blake3
import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.backup.cli_util import cli, env_for
from tests.backup.test_bitshuffle import bf16_like, read_compression_2, text_like

# ---------------------------------------------------------------------------------------
# The reader (docs/repository-format.md only)
# ---------------------------------------------------------------------------------------

DATA, TREE = 0, 1
ENTRY = struct.Struct("<BBQII32s")  # type, compression, offset, length, raw_length, id
KEY_FIELDS = {"version", "kdf", "n", "r", "p", "salt", "data", "created", "hostname"}
CONFIG_FIELDS = {"version", "id", "created", "chunker", "blob_id", "encryption",
                 "compression", "mac"}
SNAPSHOT_FIELDS = {"version", "time", "hostname", "username", "paths", "tags", "tree",
                   "parent", "excludes", "partial", "errors", "summary", "program"}
NODE_FIELDS = {"name", "type", "mode", "uid", "gid", "mtime_ns", "inode", "dev", "nlink",
               "size", "content", "subtree", "target"}


class FormatError(Exception):
    """The repository breaks the documented format (or was damaged)."""


class WrongPassword(FormatError):
    """No key object opens with the password."""


class Entry(NamedTuple):
    type: int
    compression: int
    offset: int
    length: int
    raw_length: int
    id: bytes


@dataclass(frozen=True)
class Master:
    encryption: bytes
    id_key: bytes
    chunker_seed: int


@dataclass
class IndexFile:
    supersedes: list[str]
    packs: dict[str, list[Entry]]


@dataclass
class Node:
    """One tree node with its path (bytes) and, for files, the reconstructed content."""

    path: bytes
    meta: dict[str, Any]
    content: bytes | None = None


def blake3_hex(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def keyed(key: bytes, data: bytes) -> bytes:
    return blake3.blake3(data, key=key).digest()


def unseal(key: bytes, aad: bytes, sealed: bytes) -> bytes:
    """SEAL's inverse: nonce[12] || ciphertext || tag[16]; raises InvalidTag."""
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def objects(repo: Path, kind: str) -> list[Path]:
    """The objects under one prefix, without the `.tmp-` leftovers of cut-off writes."""
    top = repo / kind
    found = [p for p in top.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")]
    return sorted(found, key=lambda p: p.name.encode())


# -- keys and config --------------------------------------------------------------------

def unwrap_key(raw: bytes, password: str) -> bytes:
    """The master JSON of one key object; raises InvalidTag for another password."""
    key = json.loads(raw)
    if set(key) != KEY_FIELDS or key["version"] != 1 or key["kdf"] != "scrypt":
        raise FormatError(f"unexpected key object {sorted(key)}")
    n, r, p = key["n"], key["r"], key["p"]
    if not (2 <= n <= 1 << 22 and n & (n - 1) == 0 and 1 <= r <= 64 and 1 <= p <= 16):
        raise FormatError(f"scrypt parameters out of range: {n}, {r}, {p}")
    kek = hashlib.scrypt(password.encode(), salt=b64(key["salt"]), n=n, r=r, p=p, dklen=32,
                         maxmem=128 * r * (n + p + 2) + (1 << 20))
    data = b64(key["data"])
    return AESGCM(kek).decrypt(data[:12], data[12:], b"swarm-maint key")


def parse_master(plain: bytes) -> Master:
    master = json.loads(plain)
    if set(master) != {"encryption", "id_key", "chunker_seed"}:
        raise FormatError(f"unexpected master key fields {sorted(master)}")
    enc, id_key = b64(master["encryption"]), b64(master["id_key"])
    if len(enc) != 32 or len(id_key) != 32 or not isinstance(master["chunker_seed"], int):
        raise FormatError("master key of the wrong shape")
    return Master(enc, id_key, master["chunker_seed"])


def open_master(repo: Path, password: str) -> tuple[str, Master]:
    """Try the key objects in the byte order of their names; the first that opens wins."""
    for path in objects(repo, "keys"):
        try:
            return path.name, parse_master(unwrap_key(path.read_bytes(), password))
        except InvalidTag:
            continue
    raise WrongPassword("no key object opens with this password")


def read_config(repo: Path, master: Master) -> dict[str, Any]:
    config = json.loads((repo / "config").read_bytes())
    mac = config.pop("mac")
    body = json.dumps(config, sort_keys=True).encode()
    if keyed(master.id_key, b"mac:" + body).hex() != mac:
        raise FormatError("config MAC does not match")
    return {**config, "mac": mac}


# -- object names -----------------------------------------------------------------------

def check_names(repo: Path) -> None:
    """Keys and packs are named by BLAKE3 of their bytes, index files and snapshots too
    (of the sealed content); a pack lives under the first two hex digits of its name."""
    for kind in ("keys", "packs", "index", "snapshots"):
        for path in objects(repo, kind):
            if blake3_hex(path.read_bytes()) != path.name:
                raise FormatError(f"{kind}/{path.name}: name is not BLAKE3 of the content")
            depth = 2 if kind == "packs" else 1
            if len(path.relative_to(repo / kind).parts) != depth:
                raise FormatError(f"{path} is not where the format puts it")
            if kind == "packs" and path.parent.name != path.name[:2]:
                raise FormatError(f"{path} is not under its name's first two hex digits")


# -- packs and index files --------------------------------------------------------------

def parse_entries(buf: bytes, pos: int, n: int) -> tuple[list[Entry], int]:
    entries = []
    for _ in range(n):
        entry = Entry(*ENTRY.unpack_from(buf, pos))
        if entry.type not in (DATA, TREE) or entry.compression not in (0, 1, 2):
            raise FormatError(f"bad entry {entry}")
        entries.append(entry)
        pos += ENTRY.size
    return entries, pos


def read_pack_header(pack: bytes, master: Master) -> list[Entry]:
    (hlen,) = struct.unpack_from("<I", pack, len(pack) - 4)
    header = unseal(master.encryption, b"H", pack[-4 - hlen:-4])
    if header[:4] != b"SMPK" or header[4] != 1:
        raise FormatError("not a version 1 pack header")
    (n,) = struct.unpack_from("<I", header, 5)
    entries, end = parse_entries(header, 9, n)
    if end != len(header):
        raise FormatError("trailing bytes in a pack header")
    at = 0
    for e in entries:  # in offset order, without gaps, up to the sealed header
        if e.offset != at:
            raise FormatError(f"blob at {e.offset}, expected {at}")
        at += e.length
    if at != len(pack) - 4 - hlen:
        raise FormatError("blobs do not end where the header starts")
    return entries


def read_index_file(sealed: bytes, master: Master) -> IndexFile:
    index = unseal(master.encryption, b"I", sealed)
    if index[:4] != b"SMIX" or index[4] != 1:
        raise FormatError("not a version 1 index file")
    (s,) = struct.unpack_from("<I", index, 5)
    pos = 9
    supersedes = [index[pos + 32 * i:pos + 32 * (i + 1)].hex() for i in range(s)]
    pos += 32 * s
    (p,) = struct.unpack_from("<I", index, pos)
    pos += 4
    packs: dict[str, list[Entry]] = {}
    for _ in range(p):
        pack_id = index[pos:pos + 32].hex()
        (n,) = struct.unpack_from("<I", index, pos + 32)
        packs[pack_id], pos = parse_entries(index, pos + 36, n)
    if pos != len(index):
        raise FormatError("trailing bytes in an index file")
    return IndexFile(supersedes, packs)


def read_index_files(repo: Path, master: Master) -> dict[str, IndexFile]:
    return {p.name: read_index_file(p.read_bytes(), master) for p in objects(repo, "index")}


def union(files: list[IndexFile]) -> dict[str, set[Entry]]:
    packs: dict[str, set[Entry]] = {}
    for f in files:
        for pack_id, entries in f.packs.items():
            packs.setdefault(pack_id, set()).update(entries)
    return packs


def active_index(files: dict[str, IndexFile]) -> dict[str, set[Entry]]:
    """The union of the packs listed by the index files that none supersedes."""
    superseded = {s for f in files.values() for s in f.supersedes}
    return union([f for name, f in files.items() if name not in superseded])


def index_from_packs(repo: Path, master: Master) -> dict[str, set[Entry]]:
    return {p.name: set(read_pack_header(p.read_bytes(), master))
            for p in objects(repo, "packs")}


# -- blobs ------------------------------------------------------------------------------

def decompress(compression: int, payload: bytes, raw_length: int) -> bytes:
    if compression == 0:
        return payload
    if compression == 1:
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_length)
    if compression == 2:
        return read_compression_2(payload)
    raise FormatError(f"unknown compression {compression}")


def decode_blob(pack: bytes, entry: Entry, master: Master) -> bytes:
    sealed = pack[entry.offset:entry.offset + entry.length]
    payload = unseal(master.encryption, b"B" + bytes([entry.type]) + entry.id, sealed)
    plain = decompress(entry.compression, payload, entry.raw_length)
    if len(plain) != entry.raw_length:
        raise FormatError(f"blob {entry.id.hex()}: {len(plain)} bytes, not {entry.raw_length}")
    if keyed(master.id_key, plain) != entry.id:
        raise FormatError(f"blob {entry.id.hex()}: content does not match its id")
    return plain


def pack_path(repo: Path, pack_id: str) -> Path:
    return repo / "packs" / pack_id[:2] / pack_id


@dataclass
class Reader:
    repo: Path
    master: Master
    index_files: dict[str, IndexFile]
    locations: dict[bytes, tuple[str, Entry]] = field(default_factory=dict)
    read_ids: set[bytes] = field(default_factory=set)

    @classmethod
    def open(cls, repo: Path, password: str) -> Reader:
        _, master = open_master(repo, password)
        read_config(repo, master)
        reader = cls(repo, master, read_index_files(repo, master))
        for pack_id, entries in active_index(reader.index_files).items():
            for e in entries:
                reader.locations[e.id] = (pack_id, e)
        return reader

    def entry(self, blob_id: bytes) -> Entry:
        return self.locations[blob_id][1]

    def blob(self, blob_id: bytes, blob_type: int) -> bytes:
        pack_id, entry = self.locations[blob_id]
        if entry.type != blob_type:
            raise FormatError(f"blob {blob_id.hex()} has type {entry.type}, not {blob_type}")
        self.read_ids.add(blob_id)
        return decode_blob(pack_path(self.repo, pack_id).read_bytes(), entry, self.master)

    def snapshots(self) -> dict[str, dict[str, Any]]:
        return {p.name: json.loads(unseal(self.master.encryption, b"snapshots",
                                          p.read_bytes()))
                for p in objects(self.repo, "snapshots")}

    def tree(self, tree_id: str) -> list[dict[str, Any]]:
        raw = self.blob(bytes.fromhex(tree_id), TREE)
        tree = json.loads(raw)
        if json.dumps(tree, sort_keys=True, separators=(",", ":")).encode() != raw:
            raise FormatError(f"tree {tree_id} is not canonical JSON")
        names = [os.fsencode(n["name"]) for n in tree["nodes"]]
        if names != sorted(names):
            raise FormatError(f"tree {tree_id}: nodes not sorted by name bytes")
        for name in names:
            if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
                raise FormatError(f"tree {tree_id}: forbidden name {name!r}")
        return list(tree["nodes"])

    def walk(self, tree_id: str, parent: bytes = b"") -> Iterator[Node]:
        """Every node below a tree, files with their content."""
        for meta in self.tree(tree_id):
            path = parent + b"/" + os.fsencode(meta["name"])
            if meta["type"] == "file":
                content = b"".join(self.blob(bytes.fromhex(i), DATA) for i in meta["content"])
                yield Node(path, meta, content)
            else:
                yield Node(path, meta)
            if meta["type"] == "dir":
                yield from self.walk(meta["subtree"], path)


# ---------------------------------------------------------------------------------------
# Repositories written by the real CLI
# ---------------------------------------------------------------------------------------

PASSWORD, SECOND_PASSWORD = "s3cret pass", "another one"
T0 = 1_700_000_000_123_456_789  # mtimes the source tree is given, in ns


def env(tmp: Path) -> dict[str, str]:
    return {**env_for(tmp, PASSWORD), "XDG_CACHE_HOME": str(tmp / "cache")}


def backup(tmp: Path, repo: Path, *paths: str | Path, tag: str = "t1") -> str:
    out = cli(tmp, "backup", "run", "--repo", str(repo), *map(str, paths), "--tag", tag,
              "--json", env=env(tmp))
    return str(json.loads(out.stdout)["snapshot"])


def init_repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    cli(tmp, "backup", "init", "--repo", str(repo), env=env(tmp))
    return repo


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_source(src: Path) -> None:
    """Every kind of entry the format describes, with chosen modes and mtimes."""
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "model.bf16").write_bytes(bf16_like(3 << 20))     # compression 2
    (src / "nested" / "log.jsonl").write_bytes(text_like(200_000))  # compression 1
    (src / "nested" / "deeper" / "noise").write_bytes(random_bytes(300_000, 5))  # 0
    (src / "empty-file").write_bytes(b"")
    (src / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "secret").write_bytes(b"key material\n")
    (src / "hard1").write_bytes(b"linked twice\n" * 100)
    os.link(src / "hard1", src / "nested" / "hard2")
    os.symlink("nested/log.jsonl", src / "link")
    os.mkfifo(src / "pipe", 0o600)
    with open(os.fsencode(src) + b"/caf\xe9", "wb") as f:
        f.write(b"not utf-8 named\n")
    os.chmod(src / "run.sh", 0o755)
    os.chmod(src / "secret", 0o640)
    os.chmod(src / "nested" / "deeper", 0o750)
    set_mtimes(os.fsencode(src))


def set_mtimes(top: bytes) -> None:
    """Children before their directory, so that no later write moves a dir's mtime."""
    for i, (dirpath, dirnames, filenames) in enumerate(os.walk(top, topdown=False)):
        for j, name in enumerate(filenames + dirnames):
            path = os.path.join(dirpath, name)
            os.utime(path, ns=(T0, T0 + 1000 * i + j), follow_symlinks=False)
        os.utime(dirpath, ns=(T0, T0 + 10**9 + i))


def scan(top: bytes) -> dict[bytes, os.stat_result]:
    found = {top: os.lstat(top)}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[path] = os.lstat(path)
    return found


def node_type(st: os.stat_result) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"),
                       (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo")):
        if test(st.st_mode):
            return name
    raise AssertionError(f"unexpected file type {st.st_mode:o}")


def assert_matches_source(nodes: dict[bytes, Node], src: Path) -> None:
    top = os.fsencode(src)
    expected = scan(top)
    got = {p: n for p, n in nodes.items() if p == top or p.startswith(top + b"/")}
    assert sorted(got) == sorted(expected)
    for path, st in expected.items():
        node = got[path]
        meta = node.meta
        assert set(meta) <= NODE_FIELDS, path
        assert meta["type"] == node_type(st), path
        assert meta["mode"] == stat.S_IMODE(st.st_mode), path
        for key in ("uid", "gid", "mtime_ns", "nlink"):
            assert meta[key] == getattr(st, f"st_{key}"), (path, key)
        assert (meta["inode"], meta["dev"]) == (st.st_ino, st.st_dev), path
        if meta["type"] == "file":
            with open(path, "rb") as f:
                assert node.content == f.read(), path
        assert meta["size"] == (st.st_size if meta["type"] == "file" else 0), path
        if meta["type"] == "symlink":
            assert meta["target"] == os.fsdecode(os.readlink(path)), path


def read_everything(reader: Reader, snapshot_id: str) -> dict[bytes, Node]:
    snapshot = reader.snapshots()[snapshot_id]
    return {n.path: n for n in reader.walk(snapshot["tree"])}


@dataclass
class Scenario:
    tmp: Path
    repo: Path
    src: Path
    snapshot_id: str
    started: float
    finished: float


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    tmp = tmp_path_factory.mktemp("format-reader")
    src = (tmp / "src").resolve()
    src.mkdir()
    make_source(src)
    repo = init_repo(tmp)
    (tmp / "pw2").write_text(SECOND_PASSWORD + "\n")
    cli(tmp, "backup", "key", "add", "--repo", str(repo), "--new-password-file",
        str(tmp / "pw2"), env=env(tmp))
    started = time.time()
    # "src/./" and a path inside it: the snapshot lists the one normalized path
    snapshot_id = backup(tmp, repo, f"{src}/./", src / "nested")
    return Scenario(tmp, repo, src, snapshot_id, started, time.time())


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------

def test_reader_opens_with_every_password_and_checks_config_and_names(
        scenario: Scenario) -> None:
    repo = scenario.repo
    keys = [p.name for p in objects(repo, "keys")]
    assert len(keys) == 2
    first_name, first = open_master(repo, PASSWORD)
    second_name, second = open_master(repo, SECOND_PASSWORD)
    assert first == second
    assert {first_name, second_name} == set(keys)
    config = read_config(repo, first)
    assert set(config) == CONFIG_FIELDS
    assert config["version"] == 1 and config["blob_id"] == "blake3-keyed"
    check_names(repo)
    # the MAC covers the config: one changed field no longer verifies
    body = json.loads((repo / "config").read_bytes())
    body["chunker"]["avg_size"] += 1
    tampered = scenario.tmp / "tampered-config"
    shutil.copytree(repo, tampered)
    os.chmod(tampered / "config", 0o644)
    (tampered / "config").write_text(json.dumps(body))
    with pytest.raises(FormatError, match="MAC"):
        read_config(tampered, first)


def test_reader_reconstructs_every_file_and_its_metadata(scenario: Scenario) -> None:
    reader = Reader.open(scenario.repo, PASSWORD)
    nodes = read_everything(reader, scenario.snapshot_id)
    assert_matches_source(nodes, scenario.src)
    top = os.fsencode(scenario.src)
    # bytes that are not UTF-8 are lone surrogates (Reader.tree checked the \u escapes)
    assert nodes[top + b"/caf\xe9"].meta["name"] == "caf\udce9"
    assert nodes[top + b"/caf\xe9"].content == b"not utf-8 named\n"
    # hard links share (dev, inode) with nlink 2; the empty directory has an empty tree
    one, two = nodes[top + b"/hard1"].meta, nodes[top + b"/nested/hard2"].meta
    assert (one["dev"], one["inode"], one["nlink"]) == (two["dev"], two["inode"], 2)
    assert reader.tree(nodes[top + b"/empty"].meta["subtree"]) == []
    assert nodes[top + b"/link"].meta["target"] == "nested/log.jsonl"
    assert nodes[top + b"/empty-file"].meta["content"] == []
    # the three compressions, each where the document says the writer uses it: blobs over
    # 32 KiB by a sample compressed both ways, smaller ones (a file's last chunk may be
    # one) with zstd only
    for name, compression in ((b"/model.bf16", 2), (b"/nested/log.jsonl", 1),
                              (b"/nested/deeper/noise", 0)):
        ids = [bytes.fromhex(i) for i in nodes[top + name].meta["content"]]
        sampled = [i for i in ids if reader.entry(i).raw_length > 32 << 10]
        assert sampled and {reader.entry(i).compression for i in sampled} == {compression}
        assert {reader.entry(i).compression for i in ids if i not in sampled} <= (
            {0, 1} if compression else {0}), name
    # the root tree is `/` with only the directories that lead to the backed-up path
    parts = top.split(b"/")[1:]
    for depth in range(len(parts)):
        parent = b"/".join([b"", *parts[:depth]])
        children = [p for p in nodes if p.rsplit(b"/", 1)[0] == parent]
        assert children == [b"/".join([b"", *parts[:depth + 1]])], parent
    # every blob the index lists belongs to this snapshot, and each was checked
    assert reader.read_ids == set(reader.locations)


def test_snapshot_fields_are_the_documented_ones(scenario: Scenario) -> None:
    reader = Reader.open(scenario.repo, PASSWORD)
    snapshots = reader.snapshots()
    assert list(snapshots) == [scenario.snapshot_id]
    snap = snapshots[scenario.snapshot_id]
    assert set(snap) == SNAPSHOT_FIELDS
    assert snap["version"] == 1
    assert snap["paths"] == [str(scenario.src)]
    assert snap["tags"] == ["t1"]
    assert snap["hostname"] == socket.gethostname()
    assert snap["parent"] is None
    assert (snap["partial"], snap["errors"], snap["excludes"]) == (False, [], [])
    assert scenario.started <= snap["time"] <= scenario.finished
    assert snap["program"].startswith("swarm-maint ")
    assert set(snap["summary"]) == {"files", "dirs", "bytes", "added_bytes", "seconds",
                                    "sockets_skipped"}
    assert bytes.fromhex(snap["tree"]) in reader.locations


def test_index_rebuilt_from_pack_headers_equals_the_index_files(scenario: Scenario) -> None:
    _, master = open_master(scenario.repo, PASSWORD)
    files = read_index_files(scenario.repo, master)
    assert files and all(f.supersedes == [] for f in files.values())
    from_packs = index_from_packs(scenario.repo, master)
    assert from_packs and active_index(files) == from_packs


def test_a_wrong_password_opens_no_key_object(scenario: Scenario) -> None:
    keys = objects(scenario.repo, "keys")
    assert len(keys) == 2
    for path in keys:
        with pytest.raises(InvalidTag):
            unwrap_key(path.read_bytes(), "not the password")
    with pytest.raises(WrongPassword):
        open_master(scenario.repo, "not the password")


def read_damaged(reader: Reader, blob_id: bytes, pack: bytes, at: int) -> None:
    """Read what the changed byte at `at` belongs to: the blob, or else the pack header."""
    _, entry = reader.locations[blob_id]
    if entry.offset <= at < entry.offset + entry.length:
        reader.blob(blob_id, entry.type)
    else:
        read_pack_header(pack, reader.master)


def test_a_changed_pack_byte_fails_the_gcm_check(scenario: Scenario) -> None:
    repo = scenario.tmp / "tampered-pack"
    shutil.copytree(scenario.repo, repo)
    reader = Reader.open(repo, PASSWORD)
    blob_id, (pack_id, entry) = next(iter(reader.locations.items()))
    path = pack_path(repo, pack_id)
    original = path.read_bytes()
    os.chmod(path, 0o644)
    for at in (entry.offset + entry.length // 2, len(original) - 10):  # a blob, the header
        broken = bytearray(original)
        broken[at] ^= 0x04
        path.write_bytes(bytes(broken))
        with pytest.raises(FormatError, match="not BLAKE3"):
            check_names(repo)
        with pytest.raises(InvalidTag):
            read_damaged(reader, blob_id, bytes(broken), at)
    path.write_bytes(original)
    assert reader.blob(blob_id, entry.type)  # the untouched pack still reads


def test_reader_follows_the_superseding_index_after_forget_and_prune(
        tmp_path: Path) -> None:
    src = (tmp_path / "src").resolve()
    src.mkdir()
    (src / "keep.bin").write_bytes(random_bytes(300_000, 7))
    (src / "gone.bin").write_bytes(random_bytes(3 << 20, 8))
    repo = init_repo(tmp_path)
    first = backup(tmp_path, repo, src)
    (src / "gone.bin").unlink()
    (src / "new.txt").write_bytes(text_like(100_000))
    set_mtimes(os.fsencode(src))
    second = backup(tmp_path, repo, src, tag="t2")
    old_index = {p.name: p.read_bytes() for p in objects(repo, "index")}
    cli(tmp_path, "backup", "forget", "--repo", str(repo), "--keep-last", "1", "--prune",
        env=env(tmp_path))
    # put the superseded index files back, as a prune cut off before its deletions would
    for name, raw in old_index.items():
        (repo / "index" / name).write_bytes(raw)

    check_names(repo)
    reader = Reader.open(repo, PASSWORD)
    snapshots = reader.snapshots()
    assert list(snapshots) == [second]
    assert snapshots[second]["parent"] == first  # informational: forgotten since
    assert first not in snapshots
    superseding = [f for f in reader.index_files.values() if f.supersedes]
    assert len(superseding) == 1 and set(superseding[0].supersedes) == set(old_index)
    from_packs = index_from_packs(repo, reader.master)
    assert active_index(reader.index_files) == from_packs
    # without following supersedes, the index would name packs prune deleted
    assert union(list(reader.index_files.values())) != from_packs
    nodes = read_everything(reader, second)
    assert_matches_source(nodes, src)
    assert os.fsencode(src) + b"/gone.bin" not in nodes
