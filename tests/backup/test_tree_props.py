"""Property tests: tree encoding, content-defined chunking, backup -> restore round trip."""

from __future__ import annotations

import io
import json
import os
import random
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyfastcdc import FastCDC

from swarm_maint.backup.backup import run_backup
from swarm_maint.backup.errors import DamagedObjectError
from swarm_maint.backup.repository import ChunkerParams, Repository
from swarm_maint.backup.restore import restore
from swarm_maint.backup.storage import LocalStorage
from swarm_maint.backup.tree import decode_tree, encode_tree

HEX64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
INTS = st.integers(min_value=0, max_value=2**63 - 1)

names = st.binary(min_size=1, max_size=24).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
).map(os.fsdecode)


@st.composite
def nodes(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["file", "dir", "symlink", "fifo"]))
    node: dict[str, Any] = {
        "name": draw(names), "type": kind, "mode": draw(st.integers(0, 0o7777)),
        "uid": draw(INTS), "gid": draw(INTS), "mtime_ns": draw(INTS),
        "size": draw(INTS) if kind == "file" else 0,
        "inode": draw(INTS), "dev": draw(INTS), "nlink": draw(st.integers(1, 100)),
    }
    if kind == "file":
        node["content"] = draw(st.lists(HEX64, max_size=4))
    elif kind == "dir":
        node["subtree"] = draw(HEX64)
    elif kind == "symlink":
        node["target"] = os.fsdecode(draw(st.binary(min_size=1, max_size=40)
                                          .filter(lambda b: b"\0" not in b)))
    return node


def unique_by_name(ns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[bytes, dict[str, Any]] = {}
    for n in ns:
        seen.setdefault(os.fsencode(n["name"]), n)
    return list(seen.values())


@given(st.lists(nodes(), max_size=12).map(unique_by_name))
def test_tree_round_trip(ns: list[dict[str, Any]]) -> None:
    data = encode_tree(ns)
    data.decode("ascii")  # surrogate escapes come out as \udcXX, never raw bytes
    back = decode_tree(data)
    assert back == sorted(ns, key=lambda n: os.fsencode(n["name"]))
    assert encode_tree(back) == data  # canonical


@pytest.mark.parametrize("tree", [
    b"not json",
    b"[]",
    b'{"nodes": {}}',
    b'{"nodes": [1]}',
])
def test_decode_rejects_garbage(tree: bytes) -> None:
    with pytest.raises(DamagedObjectError):
        decode_tree(tree)


def _file(name: str, **kw: Any) -> dict[str, Any]:
    n: dict[str, Any] = {"name": name, "type": "file", "mode": 0o644, "uid": 0, "gid": 0,
                         "mtime_ns": 1, "size": 0, "inode": 1, "dev": 1, "nlink": 1,
                         "content": []}
    n.update(kw)
    return n


@pytest.mark.parametrize("bad", [
    [_file("a", type="socket")],
    [_file("a", mode=True)],
    [_file("a", mode=0o10000)],
    [_file("a", size=-1)],
    [_file("a", content=["xyz"])],
    [_file("a", content="00" * 32)],
    [_file(5)],  # type: ignore[arg-type]
    [{**_file("a"), "type": "dir"}],  # dir without subtree
    [{**_file("a"), "type": "symlink"}],  # symlink without target
    [_file("b"), _file("a")],  # not sorted
    [_file("a"), _file("a")],  # duplicate
])
def test_decode_rejects_malformed(bad: list[dict[str, Any]]) -> None:
    raw = json.dumps({"nodes": bad}).encode()
    with pytest.raises(DamagedObjectError):
        decode_tree(raw)


# -- chunking ----------------------------------------------------------------------------

def _chunker() -> FastCDC:
    return FastCDC(1024, min_size=256, max_size=4096, seed=12345)


@settings(max_examples=50)
@given(st.binary(max_size=40_000))
def test_chunking_round_trip(data: bytes) -> None:
    chunks = [bytes(c.data) for c in _chunker().cut_buf(data)]
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= 4096 for c in chunks)
    streamed = [bytes(c.data) for c in _chunker().cut_stream(io.BytesIO(data))]
    assert streamed == chunks  # backup uses both: same cut points


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32), pos=st.integers(0, 2000),
       insert=st.binary(min_size=1, max_size=300))
def test_chunking_is_content_defined(seed: int, pos: int, insert: bytes) -> None:
    data = random.Random(seed).randbytes(120_000)
    before = {bytes(c.data) for c in _chunker().cut_buf(data)}
    changed = data[:pos] + insert + data[pos:]
    after = list(_chunker().cut_buf(changed))
    far = [bytes(c.data) for c in after if c.offset >= pos + len(insert) + 4 * 4096]
    assert far, "test data too short"
    assert all(c in before for c in far)  # cut points resynchronized after the insert


# -- backup -> restore round trip ---------------------------------------------------------

@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory: pytest.TempPathFactory) -> Repository:
    return Repository.init(LocalStorage(tmp_path_factory.mktemp("prop") / "repo"), "pw",
                           ChunkerParams(256, 1024, 4096))


leaf = st.one_of(st.binary(max_size=9000), st.just(None))  # None: a symlink
tree_st = st.recursive(
    st.dictionaries(names, leaf, max_size=4),
    lambda children: st.dictionaries(names, st.one_of(leaf, children), max_size=4),
    max_leaves=12,
)


def _make(root: Path, spec: dict[str, Any]) -> None:
    for name, value in spec.items():
        p = os.path.join(os.fsencode(root), os.fsencode(name))
        if isinstance(value, dict):
            os.mkdir(p)
            _make(Path(os.fsdecode(p)), value)
        elif value is None:
            os.symlink(b"../" + os.fsencode(name), p)
        else:
            with open(p, "wb") as f:
                f.write(value)
            os.chmod(p, 0o600 + (len(value) % 2) * 0o155)


def _describe(root: Path) -> Iterator[tuple[bytes, Any]]:
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            s = os.lstat(p)
            rel = os.path.relpath(p, base)
            if stat.S_ISLNK(s.st_mode):
                yield rel, ("l", os.readlink(p), s.st_mtime_ns)
            elif stat.S_ISDIR(s.st_mode):
                yield rel, ("d", s.st_mode, s.st_mtime_ns)
            else:
                with open(p, "rb") as f:
                    yield rel, ("f", s.st_mode, s.st_mtime_ns, f.read())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree_st)
def test_backup_restore_round_trip(shared_repo: Repository, spec: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        _make(src, spec)
        res = run_backup(shared_repo, [src], workers=2)
        assert not res.partial, res.errors
        out = Path(tmp) / "out"
        rr = restore(shared_repo, res.snapshot_id, out, workers=2)
        assert rr.errors == []
        restored = Path(os.fsdecode(os.fsencode(out) + os.fsencode(src)))
        assert dict(_describe(restored)) == dict(_describe(src))
        assert os.lstat(restored).st_mtime_ns == os.lstat(src).st_mtime_ns
