"""Directory trees stored while files are still being read: those of directories that
hold none of the files being read are saved first, and the snapshot is the one a backup
that reads everything gives."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

import swarm_maint.backup.backup as backup_mod
from swarm_maint.backup.backup import run_backup
from swarm_maint.backup.files_cache import FilesCache
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.snapshots import list_files
from swarm_maint.backup.storage import LocalStorage


def _tree(src: Path) -> None:
    for d in ("a/deep/er", "b", "c", "empty"):
        (src / d).mkdir(parents=True)
    (src / "a/one.txt").write_text("one\n")
    (src / "a/deep/two.txt").write_text("two\n")
    (src / "a/deep/er/three.json").write_text("{}\n")
    (src / "b/four.bin").write_bytes(os.urandom(300_000))
    (src / "c/changing.txt").write_text("before\n")
    (src / "c/same.txt").write_text("same\n")
    os.link(src / "b/four.bin", src / "c/four-link.bin")
    old = 1_600_000_000  # old enough for the files cache to vouch for them
    for p in src.rglob("*"):
        os.utime(p, (old, old), follow_symlinks=False)


def test_trees_of_untouched_directories_are_stored_while_files_are_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    _tree(src)
    repo = Repository.init(LocalStorage(tmp_path / "r"), "pw")
    with FilesCache(tmp_path / "files.db") as cache:
        run_backup(repo, [src], files_cache=cache)
        (src / "c/changing.txt").write_text("after, longer\n")

        saved: list[str] = []
        real_save = backup_mod.save_tree

        def recording_save(r: Repository, nodes: Any) -> tuple[str, int]:
            nodes = list(nodes)
            saved.append(",".join(sorted(str(n["name"]) for n in nodes)))
            return real_save(r, nodes)

        real_read = backup_mod._Backup.read_file
        seen_while_reading: list[list[str]] = []

        def slow_read(self: Any, e: Any) -> Any:
            # the changed file is the only one read; by the time it is, the untouched
            # directories' trees must be stored (waited for, so the test is not racy)
            for _ in range(200):
                if len(saved) >= 5:
                    break
                threading.Event().wait(0.01)
            seen_while_reading.append(list(saved))
            return real_read(self, e)

        monkeypatch.setattr(backup_mod, "save_tree", recording_save)
        monkeypatch.setattr(backup_mod._Backup, "read_file", slow_read)
        second = run_backup(repo, [src], files_cache=cache)
    assert len(seen_while_reading) == 1  # only c/changing.txt was read
    early = set(seen_while_reading[0])
    # a, a/deep, a/deep/er and the empty directory hold nothing being read (nor does b
    # when it holds the first name of the hard-linked pair); c holds the changed file
    assert {"deep,one.txt", "er,two.txt", "three.json", ""} <= early
    assert not any("changing.txt" in x for x in early)
    assert second.files == 7 and not second.partial

    monkeypatch.undo()
    fresh = run_backup(repo, [src])  # no files cache: every file read, trees after
    # the same tree for src (its parents' mtimes moved with the files cache beside it)
    subtree = {sid: dict(list_files(repo, sid))[str(src)]["subtree"]
               for sid in (second.snapshot_id, fresh.snapshot_id)}
    assert subtree[second.snapshot_id] == subtree[fresh.snapshot_id]
