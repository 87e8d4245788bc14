"""Configuration snapshots: create, list, unified diff, restore in place with a safety net."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from swarm_maint.backup.config_snapshots import (
    TAG,
    create_config_snapshot,
    list_config_snapshots,
    open_config_repo,
    restore_config_snapshot,
    snapshot_paths,
    unified_diff,
)
from swarm_maint.config import config_from_dict
from tests.backup.cli_util import cli, cli_json


def make_cfg(tmp_path: Path, paths: list[str]):  # type: ignore[no-untyped-def]
    return config_from_dict({
        "agent": {"state_dir": str(tmp_path / "state")},
        "backup": {"config_snapshots": {"paths": paths}},
    })


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    (d / "ray").mkdir(parents=True)
    (d / "ray" / "cluster.yaml").write_text("head: node-1\nworkers: 4\n")
    (d / "hosts").write_text("127.0.0.1 localhost\n")
    (d / "secret.key").write_bytes(b"\x00\x01binary")
    (d / "secret.key").chmod(0o600)
    return d


def test_create_list_diff_restore(tmp_path: Path, etc: Path) -> None:
    cfg = make_cfg(tmp_path, [str(etc), str(tmp_path / "absent")])
    repo = open_config_repo(cfg)
    pw = tmp_path / "state" / "config-snapshots.pass"
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600
    paths = snapshot_paths(cfg)
    assert paths == [str(etc)]  # missing paths are skipped
    first = create_config_snapshot(repo, paths)
    (etc / "ray" / "cluster.yaml").write_text("head: node-1\nworkers: 8\n")
    (etc / "new.conf").write_text("x=1\n")
    (etc / "secret.key").write_bytes(b"\x00\x02binary")
    second = create_config_snapshot(repo, paths, reason="periodic")
    snaps = list_config_snapshots(repo)
    assert [s for s, _ in snaps] == [first.snapshot_id, second.snapshot_id]
    assert all(TAG in o["tags"] for _, o in snaps)
    assert "reason:periodic" in snaps[1][1]["tags"]

    text = unified_diff(repo, first.snapshot_id, second.snapshot_id)
    assert f"--- a{etc}/ray/cluster.yaml" in text
    assert "-workers: 4\n+workers: 8\n" in text
    assert f"+++ b{etc}/new.conf" in text
    assert f"Binary files a{etc}/secret.key and b{etc}/secret.key differ" in text
    assert "hosts" not in text  # unchanged files are not shown

    # a bad edit: restore the first snapshot's cluster.yaml in place
    (etc / "ray" / "cluster.yaml").write_text("broken: [\n")
    res = restore_config_snapshot(repo, first.snapshot_id,
                                  includes=[f"{etc}/ray/cluster.yaml"])
    assert res.errors == []
    assert res.written == [f"{etc}/ray/cluster.yaml"]
    assert (etc / "ray" / "cluster.yaml").read_text() == "head: node-1\nworkers: 4\n"
    assert (etc / "new.conf").exists()  # not in the include: untouched
    # the safety snapshot holds the broken file, so the restore itself can be undone
    assert res.safety_snapshot is not None
    undo = restore_config_snapshot(repo, res.safety_snapshot)
    assert undo.errors == []
    assert (etc / "ray" / "cluster.yaml").read_text() == "broken: [\n"


def test_full_restore_brings_back_modes_and_deleted_files(tmp_path: Path, etc: Path) -> None:
    cfg = make_cfg(tmp_path, [str(etc)])
    repo = open_config_repo(cfg)
    snap = create_config_snapshot(repo, snapshot_paths(cfg))
    (etc / "hosts").unlink()
    (etc / "secret.key").chmod(0o644)
    res = restore_config_snapshot(repo, "latest")
    assert res.errors == []
    assert (etc / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert stat.S_IMODE((etc / "secret.key").stat().st_mode) == 0o600
    assert res.snapshot_id == snap.snapshot_id
    assert not list(etc.rglob(".swarm-maint-*"))


def test_cli(tmp_path: Path, etc: Path) -> None:
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[backup.config_snapshots]\npaths = ["{etc}"]\n'
    )
    created = cli_json(tmp_path, "config-snapshot", "create", "--config", str(cfg_file))
    assert str(cfg_file) in created["paths"]  # the agent's own config is always included
    (etc / "hosts").write_text("127.0.0.1 localhost gpu-node-17\n")
    cli(tmp_path, "config-snapshot", "create", "--config", str(cfg_file), "--reason",
        "pre-update")
    listed = cli_json(tmp_path, "config-snapshot", "list", "--config", str(cfg_file))
    assert len(listed) == 2
    diff = cli(tmp_path, "config-snapshot", "diff", listed[0]["id"], "latest", "--config",
               str(cfg_file)).stdout
    assert "+127.0.0.1 localhost gpu-node-17" in diff
    out = cli_json(tmp_path, "config-snapshot", "restore", listed[0]["id"][:12], "--yes",
                   "--include", f"{etc}/hosts", "--config", str(cfg_file))
    assert out["written"] == [f"{etc}/hosts"]
    assert (etc / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert os.path.exists(tmp_path / "state" / "config-snapshots" / "config")
