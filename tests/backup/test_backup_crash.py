"""kill -9 a real backup at random instants: the repository stays sound and nothing is lost."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.backup.cli_util import CLI, cli, cli_json, env_for

pytestmark = pytest.mark.slow


def make_dataset(root: Path, rng: random.Random) -> dict[str, str]:
    root.mkdir()
    digests = {}
    for i in range(4):
        p = root / f"shard-{i}.safetensors"
        p.write_bytes(rng.randbytes(32 << 20))
    for i in range(300):
        p = root / "cfg" / f"{i % 7}" / f"file-{i}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f'{{"step": {i}, "lr": 0.0001}}\n' * (i % 50 + 1))
    for p in root.rglob("*"):
        if p.is_file():
            digests[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return digests


def test_kill_9_at_random_points(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    data = tmp_path / "data"
    digests = make_dataset(data, rng)
    repo = str(tmp_path / "repo")
    env = env_for(tmp_path)
    cli(tmp_path, "backup", "init", "--repo", repo)
    # the kills land inside the time an uncut backup of this data takes on this machine
    scratch = str(tmp_path / "scratch")
    cli(tmp_path, "backup", "init", "--repo", scratch)
    t0 = time.monotonic()
    cli(tmp_path, "backup", "run", "--repo", scratch, str(data))
    full = time.monotonic() - t0
    killed = 0
    for delay in sorted(rng.uniform(0.1, 0.9) * full for _ in range(5)):
        proc = subprocess.Popen([*CLI, "backup", "run", "--repo", repo, str(data)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        # after every kill the repository verifies clean (orphan packs are only warnings)
        report = cli_json(tmp_path, "backup", "verify", "--repo", repo)
        assert report["ok"], report
    assert killed >= 1, "the backups finished before any kill: make the data set larger"
    packs_before = len(list((tmp_path / "repo" / "packs").rglob("*"))) if (
        tmp_path / "repo" / "packs").exists() else 0
    res = cli_json(tmp_path, "backup", "run", "--repo", repo, str(data))
    total = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    if packs_before:
        assert res["added_bytes"] < total  # what the killed runs uploaded was reused
    assert cli_json(tmp_path, "backup", "verify", "--repo", repo, "--read-data")["ok"]
    target = tmp_path / "restored"
    cli(tmp_path, "backup", "restore", "latest", "--repo", repo, "--target", str(target))
    restored_root = target / str(data).lstrip("/")
    for rel, digest in digests.items():
        assert hashlib.sha256((restored_root / rel).read_bytes()).hexdigest() == digest, rel
