"""Recovering a damaged repository end to end: verify, repair, back up again, forget."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.backup.cli_util import cli, cli_json

pytestmark = pytest.mark.slow


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _packs(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "packs").rglob("*") if p.is_file())


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "models").mkdir(parents=True)
    # several packs: large checkpoints fill packs of their own
    for i in range(3):
        (d / "models" / f"shard-{i}.safetensors").write_bytes(os.urandom(9 << 20))
    (d / "results").mkdir()
    (d / "results" / "metrics.json").write_text('{"acc": 0.91}\n' * 50)
    return d


def test_lost_pack_repair_then_backup_makes_old_snapshot_whole(tmp_path: Path,
                                                               data: Path) -> None:
    repo = tmp_path / "repo"
    cli(tmp_path, "backup", "init", "--repo", str(repo))
    first = cli_json(tmp_path, "backup", "run", "--repo", str(repo), str(data))["snapshot"]
    packs = _packs(repo)
    assert len(packs) >= 3
    victim = max(packs, key=lambda p: p.stat().st_size)  # a pack of checkpoint data
    victim.unlink()

    # without repair, a backup trusts the index: it succeeds and the loss stays
    cli(tmp_path, "backup", "run", "--repo", str(repo), str(data))
    bad = cli(tmp_path, "backup", "verify", "--repo", str(repo), check=False)
    assert bad.returncode == 1
    assert victim.name in bad.stdout
    assert "swarm-maint backup repair" in bad.stdout

    dry = cli_json(tmp_path, "backup", "repair", "--repo", str(repo), "--dry-run")
    assert dry["repair"]["changed"] and dry["verify"] is None
    assert len(dry["repair"]["missing_packs"]) == 1

    r = cli(tmp_path, "backup", "repair", "--repo", str(repo), "--json", check=False)
    assert r.returncode == 1  # snapshots still need the lost data
    out = json.loads(r.stdout)
    assert out["repair"]["missing_packs"] == [f"packs/{victim.parent.name}/{victim.name}"]
    assert out["repair"]["blobs_lost"] > 0
    missing = out["verify"]["problems"]["missing_blobs"]
    assert missing and not out["verify"]["problems"]["missing_packs"]
    assert any(a["snapshot"] == first[:8] and "/models/shard-" in a["path"]
               for p in missing for a in p["affected"])

    # the next backup stores the lost chunks again: every snapshot is whole
    cli(tmp_path, "backup", "run", "--repo", str(repo), str(data))
    ok = cli(tmp_path, "backup", "verify", "--repo", str(repo), "--read-data")
    assert "no errors were found" in ok.stdout
    target = tmp_path / "out"
    cli(tmp_path, "backup", "restore", first, "--repo", str(repo), "--target", str(target))
    restored = target / data.relative_to("/")
    assert _digests(restored) == _digests(data)


def test_damaged_blob_repair_read_data_and_forget_the_snapshot_that_stays_damaged(
        tmp_path: Path, data: Path) -> None:
    repo = tmp_path / "repo"
    cli(tmp_path, "backup", "init", "--repo", str(repo))
    first = cli_json(tmp_path, "backup", "run", "--repo", str(repo), str(data))["snapshot"]
    victim = max(_packs(repo), key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    victim.write_bytes(bytes(raw))
    # the file is gone from disk too: its data cannot come back
    (data / "models" / "shard-0.safetensors").unlink()
    for p in (data / "models").iterdir():
        p.write_bytes(os.urandom(9 << 20))  # and the others changed

    plain = cli(tmp_path, "backup", "repair", "--repo", str(repo))
    assert "nothing to do" in plain.stdout  # headers are intact
    found = cli(tmp_path, "backup", "verify", "--repo", str(repo), "--read-data",
                check=False)
    assert found.returncode == 1 and "repair --read-data" in found.stdout

    r = cli(tmp_path, "backup", "repair", "--repo", str(repo), "--read-data", check=False)
    assert r.returncode == 1
    assert "salvage" in r.stdout and "damaged: 1" in r.stdout
    assert f"needed by snapshot {first[:8]}" in r.stdout
    assert "backup forget ID" in r.stdout
    assert not victim.exists()

    second = cli_json(tmp_path, "backup", "run", "--repo", str(repo), str(data))["snapshot"]
    still = cli(tmp_path, "backup", "verify", "--repo", str(repo), check=False)
    assert still.returncode == 1  # the first snapshot needs data that exists nowhere

    # a snapshot id together with a keep policy is refused, an unknown id too
    both = cli(tmp_path, "backup", "forget", first[:10], "--keep-last", "1", "--repo",
               str(repo), check=False)
    assert both.returncode == 2 and "not both" in both.stderr
    unknown = cli(tmp_path, "backup", "forget", "ffff0000", "--repo", str(repo),
                  check=False)
    assert unknown.returncode == 2
    gone = cli_json(tmp_path, "backup", "forget", first[:10], "--prune", "--repo",
                    str(repo))
    assert gone["removed"] == [first]
    assert [s["id"] for s in cli_json(tmp_path, "backup", "snapshots", "--repo",
                                      str(repo))] == [second]
    clean = cli(tmp_path, "backup", "verify", "--repo", str(repo), "--read-data")
    assert "no errors were found" in clean.stdout


def test_forget_removes_a_damaged_snapshot_object(tmp_path: Path, data: Path) -> None:
    repo = tmp_path / "repo"
    cli(tmp_path, "backup", "init", "--repo", str(repo))
    first = cli_json(tmp_path, "backup", "run", "--repo", str(repo), str(data))["snapshot"]
    second = cli_json(tmp_path, "backup", "run", "--repo", str(repo), str(data))["snapshot"]
    snap = repo / "snapshots" / first
    snap.write_bytes(snap.read_bytes()[:-3])
    listed = cli(tmp_path, "backup", "snapshots", "--repo", str(repo), check=False)
    assert listed.returncode == 13
    # a keep policy never forgets it (its time is unknown), and prune refuses to run
    refused = cli(tmp_path, "backup", "forget", "--keep-last", "1", "--prune", "--repo",
                  str(repo), check=False)
    assert refused.returncode == 13
    latest = cli(tmp_path, "backup", "forget", "latest", "--repo", str(repo), check=False)
    assert latest.returncode == 2 and "'latest' is not a snapshot id (hex digits)" in (
        latest.stderr)
    dry = cli_json(tmp_path, "backup", "forget", first, "--dry-run", "--repo", str(repo))
    assert dry["removed"] == [first] and snap.exists()
    cli(tmp_path, "backup", "forget", first, "--prune", "--repo", str(repo))
    assert not snap.exists()
    assert [s["id"] for s in cli_json(tmp_path, "backup", "snapshots", "--repo",
                                      str(repo))] == [second]


def test_foreign_files_under_packs_are_left_alone(tmp_path: Path, data: Path) -> None:
    repo = tmp_path / "repo"
    cli(tmp_path, "backup", "init", "--repo", str(repo))
    cli(tmp_path, "backup", "run", "--repo", str(repo), str(data))
    hostile = repo / "packs" / "x\x1b[31mred\nline"  # no object name can look like it
    plain = repo / "packs" / "notes.txt"  # a valid name, but no pack's
    for f in (hostile, plain):
        f.write_text("not mine to delete")
        os.utime(f, (0, 0))  # older than any grace period
    for args in (("repair",), ("repair", "--read-data"), ("verify",), ("prune",)):
        r = cli(tmp_path, "backup", *args, "--repo", str(repo))
        assert "\x1b" not in r.stdout + r.stderr, args
    assert "not pack files (left alone): 1: notes.txt" in cli(
        tmp_path, "backup", "repair", "--repo", str(repo)).stdout
    assert "packs/notes.txt is not a pack file (left alone)" in cli(
        tmp_path, "backup", "verify", "--repo", str(repo)).stdout
    for f in (hostile, plain):
        assert f.read_text() == "not mine to delete"
