"""The files cache read ahead while the key is derived: ``FilesCache.prefetch`` and the
CLI's early files cache, and what a re-run then reads through the real CLI."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from swarm_maint.backup.files_cache import _QUERY_PATHS, CacheEntry, FilesCache, cache_folder
from swarm_maint.backup.scan import Scan
from swarm_maint.cli.backup_ops import _early_files_cache
from tests.backup.cli_util import cli_json

PAST = 1_600_000_000 * 10**9


def _files(tmp_path: Path, n: int) -> list[tuple[str, os.stat_result]]:
    d = tmp_path / "src"
    d.mkdir()
    out = []
    for i in range(n):
        p = d / f"f{i}"
        p.write_bytes(b"x" * i)
        out.append((str(p), os.stat(p)))
    return out


def _ids(i: int) -> tuple[bytes, ...]:
    return (i.to_bytes(4, "big") * 8,)


def _fill(cache: FilesCache, files: list[tuple[str, os.stat_result]]) -> None:
    cache.update([(p, CacheEntry(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                 _ids(i))) for i, (p, st) in enumerate(files)], now=1.0)


def test_prefetched_entries_are_used_for_the_same_stats_and_still_checked(
        tmp_path: Path) -> None:
    """Entries read by ``prefetch`` answer ``lookup_many`` without another query (rows
    deleted after the prefetch do not change the answer); the index check still
    applies; a file looked up with another stat object than the prefetch saw is
    queried again, and one whose entry no longer matches is not vouched for."""
    files = _files(tmp_path, 30)
    with FilesCache(tmp_path / "c.db") as cache:
        _fill(cache, files)
        cache.prefetch(files)
        other = sqlite3.connect(tmp_path / "c.db")
        other.execute("DELETE FROM files")
        other.commit()
        other.close()
        known = {c for i in range(30) if i != 7 for c in _ids(i)}
        got = cache.lookup_many(files, known)
        assert got == [None if i == 7 else _ids(i) for i in range(30)]
        # consumed: a second lookup queries the (now empty) database
        assert cache.lookup_many(files, known) == [None] * 30

        _fill(cache, files)
        cache.prefetch(files)
        p = files[3][0]
        os.utime(p, ns=(PAST, PAST))  # changed since the prefetch
        files[3] = (p, os.stat(p))
        got = cache.lookup_many(files, known)
        assert got[3] is None and got[4] == _ids(4)


def test_prefetch_stops_when_told(tmp_path: Path) -> None:
    """``stop`` is asked before each query: the key ready, the rest is left to
    ``lookup_many``, which answers the same."""
    files = _files(tmp_path, _QUERY_PATHS + 10)
    asked = 0

    def stop() -> bool:
        nonlocal asked
        asked += 1
        return asked > 1  # one query, then enough

    with FilesCache(tmp_path / "c.db") as cache:
        _fill(cache, files)
        cache.prefetch(files, stop)
        assert asked == 2
        assert len(cache._matched) == _QUERY_PATHS
        known = {c for i in range(len(files)) for c in _ids(i)}
        assert cache.lookup_many(files, known) == [_ids(i) for i in range(len(files))]
        assert cache._matched == {}


def test_early_files_cache_needs_an_existing_cache_and_a_readable_config(
        tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    state = tmp_path / "state"
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    scanned = Scan([src])

    def never() -> bool:
        return False

    assert _early_files_cache(str(repo), state, scanned, never) is None  # no config
    (repo / "config").write_text("not json")
    assert _early_files_cache(str(repo), state, scanned, never) is None
    (repo / "config").write_text(json.dumps({"id": "ab" * 32}))
    assert _early_files_cache(str(repo), state, scanned, never) is None  # no cache yet
    assert not (state / "cache").exists()  # and none was created
    # the config is not authenticated yet: an id that is not one names no path, even
    # where a files cache lies at the path it would name
    elsewhere = tmp_path / "elsewhere" / "files.db"
    with FilesCache(elsewhere):
        pass
    before = elsewhere.read_bytes()
    for bad in ("../../elsewhere", "AB" * 32, 7, None, ["x"]):
        (repo / "config").write_text(json.dumps({"id": bad}))
        os.makedirs(state / "cache", exist_ok=True)
        assert _early_files_cache(str(repo), state, scanned, never) is None
    assert elsewhere.read_bytes() == before
    os.rmdir(state / "cache")
    (repo / "config").write_text(json.dumps({"id": "ab" * 32}))
    assert not (state / "cache").exists()  # and none was created
    db = cache_folder(state, "ab" * 32) / "files.db"
    entry = next(e for e in scanned.files)
    with FilesCache(db) as cache:
        cache.update([(entry.path, CacheEntry(entry.st.st_size, entry.st.st_mtime_ns,
                                              entry.st.st_ctime_ns, entry.st.st_ino,
                                              _ids(1)))], now=1.0)
    early = _early_files_cache(str(repo), state, scanned, never)
    assert early is not None
    try:
        assert early.path == db
        assert early.lookup_many([(entry.path, entry.st)], set(_ids(1))) == [_ids(1)]
    finally:
        early.close()


@pytest.mark.slow
def test_cli_re_run_reads_only_what_changed(tmp_path: Path) -> None:
    """Through the real CLI: a re-run of unchanged files reads none of them, a new file
    is the only one read, and without the state directory's cache everything is read
    again (and nothing stored twice)."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        (data / f"shard-{i}.json").write_text(json.dumps({"i": i}) * 50)
    (data / "model.bin").write_bytes(os.urandom(9 << 20))  # streamed, not one read
    for p in data.iterdir():
        os.utime(p, ns=(PAST, PAST))  # old enough for the cache to vouch for
    repo = str(tmp_path / "repo")
    cli_json(tmp_path, "backup", "init", "--repo", repo)
    first = cli_json(tmp_path, "backup", "run", "--repo", repo, str(data))
    assert (first["files_read"], first["bytes_read"]) == (6, first["bytes"])
    second = cli_json(tmp_path, "backup", "run", "--repo", repo, str(data))
    assert (second["files_read"], second["bytes_read"]) == (0, 0)
    assert second["bytes"] == first["bytes"]
    (data / "finetuned.bin").write_bytes(os.urandom(1 << 20))
    os.utime(data / "finetuned.bin", ns=(PAST, PAST))
    third = cli_json(tmp_path, "backup", "run", "--repo", repo, str(data))
    assert (third["files_read"], third["bytes_read"]) == (1, 1 << 20)
    for db in (tmp_path / "state").rglob("files.db"):
        db.unlink()
    fourth = cli_json(tmp_path, "backup", "run", "--repo", repo, str(data))
    assert fourth["files_read"] == 7
    assert fourth["added_bytes"] < 64 << 10  # only trees: every chunk was stored
