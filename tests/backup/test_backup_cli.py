"""The backup commands end to end against real temporary repositories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.backup.cli_util import cli, cli_json, env_for

pytestmark = pytest.mark.slow


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "models").mkdir(parents=True)
    (d / "models" / "ckpt.safetensors").write_bytes(os.urandom(3 << 20))
    (d / "results").mkdir()
    (d / "results" / "metrics.json").write_text('{"acc": 0.91}\n' * 100)
    (d / "results" / "skip.tmp").write_text("scratch")
    (d / "empty").mkdir()
    os.symlink("models/ckpt.safetensors", d / "latest")
    return d


def test_round_trip_through_the_cli(tmp_path: Path, data: Path) -> None:
    repo = str(tmp_path / "repo")
    init = cli_json(tmp_path, "backup", "init", "--repo", repo)
    assert len(init["repository"]) == 64
    first = cli_json(tmp_path, "backup", "run", "--repo", repo, "--tag", "daily",
                     "--exclude", "*.tmp", str(data))
    assert set(first) >= {"snapshot", "files", "bytes", "added_bytes", "seconds"}
    assert first["files"] == 2
    assert first["added_bytes"] > 3 << 20
    second = cli_json(tmp_path, "backup", "run", "--repo", repo, str(data))
    assert second["added_bytes"] < 64 << 10  # unchanged data: only new trees, if any
    snaps = cli_json(tmp_path, "backup", "snapshots", "--repo", repo)
    assert [s["id"] for s in snaps] == [first["snapshot"], second["snapshot"]]
    assert snaps[0]["tags"] == ["daily"]
    listing = cli_json(tmp_path, "backup", "ls", first["snapshot"][:10], "--repo", repo)
    paths = {row["path"] for row in listing}
    assert any(p.endswith("results/metrics.json") for p in paths)
    assert not any(p.endswith("skip.tmp") for p in paths)
    changes = cli_json(tmp_path, "backup", "diff", first["snapshot"], second["snapshot"],
                       "--repo", repo)
    assert any(c["path"].endswith("skip.tmp") and c["change"] == "+" for c in changes)
    # the second backup of the same paths follows the first: one snapshot diffs against it
    assert [s["parent"] for s in snaps] == [None, first["snapshot"]]
    assert cli_json(tmp_path, "backup", "diff", second["snapshot"][:12],
                    "--repo", repo) == changes
    lone = cli(tmp_path, "backup", "diff", first["snapshot"], "--repo", repo, check=False)
    assert lone.returncode == 2 and "has no parent" in lone.stderr
    target = tmp_path / "out"
    res = cli_json(tmp_path, "backup", "restore", "latest", "--repo", repo,
                   "--target", str(target))
    assert res["errors"] == []
    root = target / str(data).lstrip("/")
    assert (root / "models" / "ckpt.safetensors").read_bytes() == (
        data / "models" / "ckpt.safetensors").read_bytes()
    assert os.readlink(root / "latest") == "models/ckpt.safetensors"
    assert (root / "empty").is_dir()
    assert cli_json(tmp_path, "backup", "verify", "--repo", repo, "--read-data")["ok"]
    forget = cli_json(tmp_path, "backup", "forget", "--repo", repo, "--keep-last", "1",
                      "--prune")
    assert forget["removed"] == [first["snapshot"]]
    orphan = cli(tmp_path, "backup", "diff", "latest", "--repo", repo, check=False)
    assert orphan.returncode == 2 and "forgotten" in orphan.stderr
    assert cli_json(tmp_path, "backup", "verify", "--repo", repo, "--read-data")["ok"]


def test_password_errors(tmp_path: Path, data: Path) -> None:
    repo = str(tmp_path / "repo")
    cli(tmp_path, "backup", "init", "--repo", repo)
    wrong = cli(tmp_path, "backup", "snapshots", "--repo", repo,
                env=env_for(tmp_path, "not it"), check=False)
    assert wrong.returncode == 12
    assert wrong.stderr.strip().splitlines() == [
        f"swarm-maint: error: {repo}: wrong password (no key of this repository opens with it)"
    ]
    env = env_for(tmp_path)
    del env["SWARM_MAINT_PASSWORD"]
    none = cli(tmp_path, "backup", "snapshots", "--repo", repo, env=env, check=False)
    assert none.returncode == 2
    assert "SWARM_MAINT_PASSWORD" in none.stderr
    pwfile = tmp_path / "pw"
    pwfile.write_text("s3cret pass\n")
    ok = cli(tmp_path, "backup", "snapshots", "--repo", repo, "--password-file", str(pwfile),
             env=env)
    assert ok.returncode == 0
    missing = cli(tmp_path, "backup", "snapshots", "--repo", str(tmp_path / "nope"),
                  check=False)
    assert missing.returncode == 10
    assert "no repository" in missing.stderr
    nothing = cli(tmp_path, "backup", "run", "--repo", repo, str(tmp_path / "absent"),
                  check=False)
    assert nothing.returncode == 2
    assert "no such file" in nothing.stderr


def test_verify_names_damage(tmp_path: Path, data: Path) -> None:
    repo = tmp_path / "repo"
    cli(tmp_path, "backup", "init", "--repo", str(repo))
    cli(tmp_path, "backup", "run", "--repo", str(repo), str(data))
    packs = sorted((repo / "packs").rglob("*"), key=lambda p: p.stat().st_size if p.is_file()
                   else 0)
    biggest = packs[-1]
    raw = bytearray(biggest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the checkpoint's chunks (trees are a few small blobs)
    biggest.write_bytes(bytes(raw))
    r = cli(tmp_path, "backup", "verify", "--repo", str(repo), "--read-data", check=False)
    assert r.returncode != 0
    assert biggest.name in r.stdout
    assert "ckpt.safetensors" in r.stdout
