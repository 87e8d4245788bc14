"""When a backup looks for packs that a killed backup left unindexed: the rules of
OrphanCheck, and real CLI backups killed with SIGKILL, then followed by verify (which
removes the stale lock) and by another backup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from swarm_maint.backup.orphan_check import CHECK_EVERY, OrphanCheck
from tests.backup.cli_util import CLI, cli, cli_json, env_for
from tests.backup.test_locks import dead_pid
from tests.fake_clock import FakeClock

MIB = 1 << 20


# -- the rules -------------------------------------------------------------------------

def test_a_state_that_never_looked_looks_and_a_finished_backup_lets_the_next_skip(
        tmp_path: Path) -> None:
    clock = FakeClock()
    check = OrphanCheck(tmp_path, clock.time)
    assert check.due(0)
    check.begin(True)
    check.end()
    clock.advance(86400)
    again = OrphanCheck(tmp_path, clock.time)
    assert not again.due(0)
    assert again.due(1)  # its lock removed a stale lock: a writer died holding it
    again.begin(False)
    again.end()
    # skipping does not move the last look: a week after it, a backup looks again
    clock.advance(CHECK_EVERY - 86400 - 1)
    assert not OrphanCheck(tmp_path, clock.time).due(0)
    clock.advance(1)
    assert OrphanCheck(tmp_path, clock.time).due(0)


def test_a_backup_that_did_not_finish_makes_the_next_look(tmp_path: Path) -> None:
    clock = FakeClock()
    first = OrphanCheck(tmp_path, clock.time)
    first.begin(True)
    first.end()
    second = OrphanCheck(tmp_path, clock.time)
    assert not second.due(0)
    second.begin(False)  # ... and is killed before end()
    assert OrphanCheck(tmp_path, clock.time).due(0)


@pytest.mark.parametrize("content", [
    b"", b"{", b"[]", b'{"unfinished": false}', b'{"unfinished": false, "checked": null}',
    b'{"unfinished": "no", "checked": 1800000000.0}',
    b'{"unfinished": false, "checked": "1800000000"}',
])
def test_a_missing_or_damaged_record_means_look(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "orphan-check.json").write_bytes(content)
    assert OrphanCheck(tmp_path, FakeClock().time).due(0)


def test_a_clock_set_back_means_look(tmp_path: Path) -> None:
    clock = FakeClock()
    check = OrphanCheck(tmp_path, clock.time)
    check.begin(True)
    check.end()
    clock.advance(-3600)
    assert OrphanCheck(tmp_path, clock.time).due(0)


# -- real backups, killed --------------------------------------------------------------

def killed_backup(tmp_path: Path) -> tuple[str, Path, set[str]]:
    """A repository holding a finished snapshot of a small tree and the packs of a backup
    of a larger one that SIGKILL cut off before it wrote an index; (repository, the larger
    tree, the names of those packs)."""
    repo = str(tmp_path / "repo")
    cli(tmp_path, "backup", "init", "--repo", repo)
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("first snapshot\n")
    cli(tmp_path, "backup", "run", "--repo", repo, str(small))
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):  # 96 MiB of noise: 12 packs, below the 16 that make an index
        (data / f"part-{i}.bin").write_bytes(os.urandom(32 * MIB))
    packs = tmp_path / "repo" / "packs"
    before = {p.name for p in packs.rglob("*") if p.is_file()}
    proc = subprocess.Popen([*CLI, "backup", "run", "--repo", repo, str(data)],
                            env=env_for(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    new: set[str] = set()
    while len(new) < 3 and proc.poll() is None and time.monotonic() < deadline:
        new = {p.name for p in packs.rglob("*") if p.is_file()
               and not p.name.startswith(".")} - before
        time.sleep(0.002)
    assert proc.poll() is None, "the backup ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    report = cli_json(tmp_path, "backup", "verify", "--repo", repo)
    orphans = {p["name"].rsplit("/", 1)[1]
               for p in report["problems"]["unreferenced_packs"]}
    assert report["ok"] and orphans >= new, report
    return repo, data, orphans


def cache_dir(tmp_path: Path) -> Path:
    [folder] = (tmp_path / "state").glob("*/cache/*")
    return folder


def mark_finished(tmp_path: Path) -> None:
    """What the record says when the node's last backup finished and looked a day ago."""
    (cache_dir(tmp_path) / "orphan-check.json").write_text(
        json.dumps({"unfinished": False, "checked": time.time() - 86400}))


def unreferenced(tmp_path: Path, repo: str) -> set[str]:
    report = cli_json(tmp_path, "backup", "verify", "--repo", repo)
    assert report["ok"], report
    return {p["name"].rsplit("/", 1)[1] for p in report["problems"]["unreferenced_packs"]}


def orphan_bytes(tmp_path: Path, orphans: set[str]) -> int:
    packs = tmp_path / "repo" / "packs"
    total = sum(p.stat().st_size for p in packs.rglob("*") if p.name in orphans)
    assert total >= 2 * 8 * MIB
    return total


def test_after_a_kill_and_a_verify_the_next_backup_adopts_what_was_uploaded(
        tmp_path: Path) -> None:
    repo, data, orphans = killed_backup(tmp_path)
    # the verify above removed the killed backup's stale lock: only the record is left
    assert not list((tmp_path / "repo" / "locks").iterdir())
    assert json.loads((cache_dir(tmp_path) / "orphan-check.json").read_text())["unfinished"]
    res = cli_json(tmp_path, "backup", "run", "--repo", repo, str(data))
    assert unreferenced(tmp_path, repo) == set()
    # those packs were reused
    assert res["added_bytes"] < 96 * MIB - orphan_bytes(tmp_path, orphans) + MIB


def test_a_stale_lock_the_backup_removes_makes_it_adopt(tmp_path: Path) -> None:
    repo, data, orphans = killed_backup(tmp_path)
    # the record says all is well, but the killed backup's lock is still there
    mark_finished(tmp_path)
    now = time.time()
    (tmp_path / "repo" / "locks" / ("e" * 64)).write_text(json.dumps(
        {"version": 1, "exclusive": False, "hostname": os.uname().nodename,
         "pid": dead_pid(), "time": now, "created": now, "expires": now + 1800}))
    res = cli_json(tmp_path, "backup", "run", "--repo", repo, str(data))
    assert unreferenced(tmp_path, repo) == set()
    assert res["added_bytes"] < 96 * MIB - orphan_bytes(tmp_path, orphans) + MIB


def test_with_no_sign_of_a_crash_the_backup_does_not_list_the_packs(tmp_path: Path) -> None:
    repo, data, orphans = killed_backup(tmp_path)
    mark_finished(tmp_path)  # and verify removed the stale lock
    res = cli_json(tmp_path, "backup", "run", "--repo", repo, str(data))
    # nothing was adopted: the packs stay unreferenced (prune removes them) and the
    # data was stored again
    assert unreferenced(tmp_path, repo) == orphans
    assert res["added_bytes"] >= 96 * MIB
    record = json.loads((cache_dir(tmp_path) / "orphan-check.json").read_text())
    assert record["unfinished"] is False
