"""Configuration snapshots under hostile or broken conditions: what the safety snapshot
missed is left alone, restore never follows a swapped directory, private files stay
private while written, and bad arguments or a missing password are clear errors."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from swarm_maint.backup import config_snapshots as cs
from swarm_maint.backup.config_snapshots import (
    config_diff,
    create_config_snapshot,
    existing_config_repo,
    open_config_repo,
    restore_config_snapshot,
)
from swarm_maint.config import config_from_dict
from swarm_maint.errors import UsageError
from tests.backup.cli_util import cli, cli_json


def make_cfg(tmp_path: Path, paths: list[str]):  # type: ignore[no-untyped-def]
    return config_from_dict({
        "agent": {"state_dir": str(tmp_path / "state")},
        "backup": {"config_snapshots": {"paths": paths}},
    })


def cfg_file(tmp_path: Path, paths: list[Path]) -> Path:
    f = tmp_path / "agent.toml"
    quoted = ", ".join(f'"{p}"' for p in paths)
    f.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
                 f"[backup.config_snapshots]\npaths = [{quoted}]\n")
    return f


def bound_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    return s


def test_what_the_safety_snapshot_could_not_save_is_left_alone(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("a1\n")
    (etc / "b.conf").write_text("b1\n")
    repo = open_config_repo(make_cfg(tmp_path, [str(etc)]))
    first = create_config_snapshot(repo, [str(etc)])
    (etc / "a.conf").write_text("a2\n")
    (etc / "b.conf").unlink()
    sock = bound_socket(etc / "b.conf")  # no snapshot can hold a socket
    try:
        res = restore_config_snapshot(repo, first.snapshot_id)
    finally:
        sock.close()
    assert res.unsaved == [str(etc / "b.conf")]
    assert res.written == [str(etc / "a.conf")]
    assert (etc / "a.conf").read_text() == "a1\n"
    assert stat.S_ISSOCK(os.lstat(etc / "b.conf").st_mode)  # not replaced
    [err] = res.errors
    assert err["path"] == str(etc / "b.conf")
    assert "safety snapshot could not save it" in err["error"]


def test_cli_restore_over_an_unreadable_file_keeps_it(tmp_path: Path) -> None:
    """The realistic case, run without root's permission bypass."""
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed"
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "f.conf").write_text("v1\n")
    conf = cfg_file(tmp_path, [etc])
    cli_json(tmp_path, "config-snapshot", "create", "--config", str(conf))
    (etc / "f.conf").write_text("v2-precious\n")
    (etc / "f.conf").chmod(0)
    no_bypass = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                 "--inh-caps=-dac_override,-dac_read_search"]
    env = {**os.environ, "SWARM_MAINT_PASSWORD": "unused", "XDG_STATE_HOME": str(tmp_path)}
    r = subprocess.run([*no_bypass, *cli.__globals__["CLI"], "config-snapshot", "restore",
                        "latest", "--yes", "--config", str(conf)],
                       capture_output=True, text=True, env=env, timeout=120)
    (etc / "f.conf").chmod(0o644)
    assert r.returncode == 3, r.stderr
    assert "could not save" in r.stdout + r.stderr
    assert (etc / "f.conf").read_text() == "v2-precious\n"


def test_restore_does_not_follow_a_directory_swapped_for_a_symlink(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "sub").mkdir(parents=True)
    (etc / "sub" / "x.conf").write_text("orig\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = open_config_repo(make_cfg(tmp_path, [str(etc)]))
    snap = create_config_snapshot(repo, [str(etc)])
    shutil.rmtree(etc / "sub")
    (etc / "sub").symlink_to(outside)
    (outside / "x.conf").write_text("someone else's\n")
    res = restore_config_snapshot(repo, snap.snapshot_id)
    assert res.written == []
    [err] = res.errors
    assert "no longer a directory" in err["error"]
    assert (outside / "x.conf").read_text() == "someone else's\n"
    assert not list(outside.glob(".swarm-maint-*"))


def test_symlinks_above_the_snapshotted_path_are_followed(tmp_path: Path) -> None:
    """A path configured through a system symlink (/etc/alternatives, a moved /home)
    is reached as configured; missing directories come back with their mode."""
    real = tmp_path / "real"
    (real / "etc" / "ssh").mkdir(parents=True)
    (real / "etc" / "ssh").chmod(0o750)
    (real / "etc" / "ssh" / "sshd_config").write_text("Port 22\n")
    (tmp_path / "link").symlink_to(real)
    top = tmp_path / "link" / "etc"
    repo = open_config_repo(make_cfg(tmp_path, [str(top)]))
    snap = create_config_snapshot(repo, [str(top)])
    shutil.rmtree(real / "etc" / "ssh")
    res = restore_config_snapshot(repo, snap.snapshot_id)
    assert res.errors == [] and res.written == [f"{top}/ssh/sshd_config"]
    assert (real / "etc" / "ssh" / "sshd_config").read_text() == "Port 22\n"
    assert stat.S_IMODE((real / "etc" / "ssh").stat().st_mode) == 0o750


def test_the_temporary_file_is_private_until_it_has_its_final_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "hosts").chmod(0o644)
    repo = open_config_repo(make_cfg(tmp_path, [str(etc)]))
    snap = create_config_snapshot(repo, [str(etc)])
    (etc / "hosts").write_text("changed\n")
    seen: list[int] = []
    real = cs.pwrite_all

    def spy(fd: int, data: memoryview, offset: int = 0) -> None:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real(fd, data, offset)

    monkeypatch.setattr(cs, "pwrite_all", spy)
    old_umask = os.umask(0)
    try:
        res = restore_config_snapshot(repo, snap.snapshot_id)
    finally:
        os.umask(old_umask)
    assert res.errors == []
    assert seen and set(seen) == {0o600}
    assert stat.S_IMODE((etc / "hosts").stat().st_mode) == 0o644
    assert (etc / "hosts").read_text() == "127.0.0.1 localhost\n"


def test_include_that_matches_nothing_is_an_error(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("a\n")
    repo = open_config_repo(make_cfg(tmp_path, [str(etc)]))
    snap = create_config_snapshot(repo, [str(etc)])
    with pytest.raises(UsageError, match="matches no file"):
        restore_config_snapshot(repo, snap.snapshot_id, includes=["a.conf"])


def test_reading_commands_create_nothing_and_a_lost_password_is_named(
        tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("a\n")
    conf = cfg_file(tmp_path, [etc])
    assert cli_json(tmp_path, "config-snapshot", "list", "--config", str(conf)) == []
    r = cli(tmp_path, "config-snapshot", "diff", "latest", "latest", "--config", str(conf),
            check=False)
    assert r.returncode == 2 and "no configuration snapshots yet" in r.stderr
    assert not (tmp_path / "state").exists()
    cli_json(tmp_path, "config-snapshot", "create", "--config", str(conf))
    pw = tmp_path / "state" / "config-snapshots.pass"
    pw.unlink()
    r = cli(tmp_path, "config-snapshot", "list", "--config", str(conf), check=False)
    assert r.returncode == 4
    assert str(pw) in r.stderr and "missing" in r.stderr
    assert not pw.exists()  # no new password that could never open it


def test_a_configured_directory_with_other_files_is_not_made_a_repository(
        tmp_path: Path) -> None:
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "keep.txt").write_text("keep\n")
    cfg = config_from_dict({"agent": {"state_dir": str(tmp_path / "state")},
                            "backup": {"config_snapshots": {"repo": str(data)}}})
    assert existing_config_repo(cfg) is None
    with pytest.raises(Exception, match="not empty and not a repository"):
        open_config_repo(cfg)
    assert sorted(p.name for p in data.iterdir()) == ["keep.txt"]


def test_cli_arguments_and_partial_snapshots(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "a.conf").write_text("a\n")
    conf = cfg_file(tmp_path, [etc])
    for bad, why in (("", "empty path"), (str(tmp_path / "nope"), "no such file")):
        r = cli(tmp_path, "config-snapshot", "create", "--path", bad, "--config", str(conf),
                check=False)
        assert r.returncode == 2 and why in r.stderr
    below = bound_socket(etc / "below.sock")  # no data: skipped, not an error
    named = bound_socket(tmp_path / "agent.sock")  # asked for by name: cannot be saved
    try:
        ok = cli(tmp_path, "config-snapshot", "create", "--config", str(conf))
        r = cli(tmp_path, "config-snapshot", "create", "--config", str(conf), "--path",
                str(etc), "--path", str(tmp_path / "agent.sock"), check=False)
    finally:
        below.close()
        named.close()
    assert "below.sock" not in ok.stdout + ok.stderr and "PARTIAL" not in ok.stdout
    assert r.returncode == 3
    assert "agent.sock" in r.stderr and "PARTIAL" in r.stdout


def test_rich_markup_in_names_and_reasons_is_printed_as_text(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    weird = etc / "a[" / "b]"
    weird.parent.mkdir(parents=True)
    weird.write_text("x\n")
    conf = cfg_file(tmp_path, [etc])
    cli(tmp_path, "config-snapshot", "create", "--config", str(conf), "--reason", "[/]")
    out = cli(tmp_path, "config-snapshot", "list", "--config", str(conf),
              env={**os.environ, "COLUMNS": "300", "XDG_STATE_HOME": str(tmp_path)}).stdout
    assert "[/]" in out


def test_diff_names_type_changes_and_large_files(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "big.conf").write_text("".join(f"key{i} = value{i}\n" for i in range(70000)))
    (etc / "a.conf").write_text("one\n")
    (etc / "c.conf").write_text("three\n")
    repo = open_config_repo(make_cfg(tmp_path, [str(etc)]))
    first = create_config_snapshot(repo, [str(etc)])
    (etc / "big.conf").write_text("changed\n" * 200000)
    (etc / "a.conf").unlink()
    (etc / "a.conf").mkdir()
    (etc / "a.conf" / "inner").write_text("in\n")
    (etc / "c.conf").unlink()
    os.mkfifo(etc / "c.conf")
    second = create_config_snapshot(repo, [str(etc)])
    d = config_diff(repo, first.snapshot_id, second.snapshot_id)
    assert f"{etc}/big.conf: contents differ (larger than 1 MiB: not shown)" in d.text
    assert f"{etc}/a.conf: regular file -> directory" in d.text
    assert f"{etc}/c.conf: regular file -> fifo" in d.text
    assert "Binary" not in d.text
    kinds = {c["path"]: (c["status"], c["a"], c["b"]) for c in d.changes}
    assert kinds[f"{etc}/c.conf"] == ("M", "regular file", "fifo")
    assert kinds[f"{etc}/a.conf/inner"] == ("+", "nothing", "regular file")
