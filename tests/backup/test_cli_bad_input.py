"""The backup CLI under bad input and damaged repositories: one clear line, the
documented exit code, and nothing lost or written where it should not be."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.backup.cli_util import CLI, cli, cli_json, env_for


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """(repository with one snapshot of src, src)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(200_000))
    (src / "sub" / "b.txt").write_text("hello\n")
    repo = tmp_path / "repo"
    cli(tmp_path, "backup", "init", "--repo", str(repo))
    cli(tmp_path, "backup", "run", "--repo", str(repo), str(src), "--tag", "daily")
    return repo, src


def fails(tmp_path: Path, code: int, *args: str, cwd: Path | None = None,
          env: dict[str, str] | None = None) -> str:
    """Run the CLI, expect exit ``code`` and one error line; return stderr."""
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                       env=env or env_for(tmp_path), cwd=cwd, stdin=subprocess.DEVNULL)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr


def snapshot_count(repo: Path) -> int:
    return len(list((repo / "snapshots").iterdir()))


def test_a_keep_policy_that_keeps_nothing_forgets_nothing(tmp_path: Path, setup) -> None:
    repo, src = setup
    cli(tmp_path, "backup", "run", "--repo", str(repo), str(src), "--tag", "daily")
    for extra in ((), ("--dry-run",), ("--prune",)):
        err = fails(tmp_path, 2, "backup", "forget", "--repo", str(repo), "--keep-tag",
                    "dialy", *extra)
        assert "--keep-tag dialy matches no snapshot" in err
    assert snapshot_count(repo) == 2
    out = cli_json(tmp_path, "backup", "forget", "--repo", str(repo), "--keep-last", "1")
    assert len(out["removed"]) == 1 and len(out["kept"]) == 1


def test_snapshot_ids_with_a_keep_option_are_refused_even_at_zero(tmp_path: Path,
                                                                   setup) -> None:
    """``forget ID --keep-last 0`` is as ambiguous as with any other count: refused
    before anything is read, and the snapshot stays; ``--keep-last 0`` alone is no
    policy at all."""
    repo, _ = setup
    sid = next((repo / "snapshots").iterdir()).name
    for keep in (("--keep-last", "0"), ("--keep-daily", "0"), ("--keep-last", "2"),
                 ("--keep-tag", "daily")):
        err = fails(tmp_path, 2, "backup", "forget", "--repo", str(repo), sid[:12], *keep)
        assert "give snapshot ids or a keep policy, not both" in err
    err = fails(tmp_path, 2, "backup", "forget", "--repo", str(repo), "--keep-last", "0")
    assert "no keep policy given" in err
    assert snapshot_count(repo) == 1
    out = cli_json(tmp_path, "backup", "forget", "--repo", str(repo), sid[:12])
    assert out["removed"] == [sid] and snapshot_count(repo) == 0


def test_forget_prune_with_a_damaged_snapshot_forgets_nothing(tmp_path: Path, setup) -> None:
    repo, src = setup
    damaged = cli_json(tmp_path, "backup", "run", "--repo", str(repo), str(src))["snapshot"]
    cli(tmp_path, "backup", "run", "--repo", str(repo), str(src))
    (repo / "snapshots" / damaged).write_text("junk")
    (repo / "snapshots" / "zz").write_text("no object has this name: not a snapshot")
    err = fails(tmp_path, 13, "backup", "forget", "--repo", str(repo), "--keep-last", "1",
                "--prune")
    assert "nothing was forgotten or deleted" in err
    assert snapshot_count(repo) == 4
    r = cli(tmp_path, "backup", "forget", "--repo", str(repo), "--keep-last", "1")
    # without --prune: said, and left alone
    assert f"snapshot {damaged[:16]} cannot be read" in r.stderr
    assert snapshot_count(repo) == 3 and (repo / "snapshots" / "zz").exists()


def test_empty_locations_are_refused(tmp_path: Path, setup) -> None:
    repo, _src = setup
    here = tmp_path / "here"
    here.mkdir()
    assert "repository location is empty" in fails(tmp_path, 2, "backup", "init", "--repo",
                                                   "", cwd=here)
    assert "PATH: empty path" in fails(tmp_path, 2, "backup", "run", "--repo", str(repo), "",
                                       cwd=here)
    assert "--target: empty path" in fails(tmp_path, 2, "backup", "restore", "latest",
                                           "--repo", str(repo), "--target", "", cwd=here)
    assert list(here.iterdir()) == []
    assert snapshot_count(repo) == 1


def test_storage_problems_are_one_line(tmp_path: Path, setup) -> None:
    repo, src = setup
    bad = tmp_path / "bad"
    shutil.copytree(repo, bad)
    (bad / "config").unlink()
    (bad / "config").mkdir()
    assert f"{bad}/config: not a regular file" in fails(tmp_path, 9, "backup", "snapshots",
                                                    "--repo", str(bad))
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "not a directory" in fails(tmp_path, 10, "backup", "init", "--repo", str(afile))
    assert "exists and is not a directory" in fails(
        tmp_path, 2, "backup", "restore", "latest", "--repo", str(repo), "--target", str(afile))
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("mine")
    assert "not empty and not a repository" in fails(tmp_path, 10, "backup", "init",
                                                     "--repo", str(full))
    assert sorted(p.name for p in full.iterdir()) == ["mine.txt"]
    state_file = tmp_path / "statefile"
    state_file.write_text("")
    env = {**env_for(tmp_path), "XDG_STATE_HOME": str(state_file)}
    assert "cannot use the state directory" in fails(
        tmp_path, 4, "backup", "run", "--repo", str(repo), str(src), "--no-lease", env=env)


def test_a_read_only_repository_is_one_line_without_root_s_bypass(tmp_path: Path,
                                                                  setup) -> None:
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed"
    repo, src = setup
    no_bypass = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner",
                 "--inh-caps=-dac_override,-dac_read_search,-fowner"]
    target = tmp_path / "restored"
    for p in [repo, *repo.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        r = subprocess.run([*no_bypass, *CLI, "backup", "run", "--repo", str(repo), str(src)],
                           capture_output=True, text=True, env=env_for(tmp_path), timeout=120)
        # recovering data must not depend on writing to the repository (a read-only mount)
        restored = subprocess.run(
            [*no_bypass, *CLI, "backup", "restore", "latest", "--repo", str(repo),
             "--target", str(target)],
            capture_output=True, text=True, env=env_for(tmp_path), timeout=120)
        verified = subprocess.run([*no_bypass, *CLI, "backup", "verify", "--repo", str(repo)],
                                  capture_output=True, text=True, env=env_for(tmp_path),
                                  timeout=120)
    finally:
        for p in [repo, *repo.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert r.returncode == 9, r.stderr
    assert "Permission denied" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert restored.returncode == 0, restored.stderr
    assert "reading without one" in restored.stderr
    assert (target / src.relative_to("/") / "sub" / "b.txt").read_text() == "hello\n"
    assert verified.returncode == 0, verified.stderr


def test_a_password_that_is_not_utf8(tmp_path: Path, setup) -> None:
    repo, _ = setup
    env = {os.fsencode(k): os.fsencode(v) for k, v in env_for(tmp_path).items()}
    env[b"SWARM_MAINT_PASSWORD"] = b"\xff\xfe"
    r = subprocess.run([*CLI, "backup", "snapshots", "--repo", str(repo)],
                       capture_output=True, text=True, env=env, timeout=120)  # type: ignore[arg-type]
    assert r.returncode == 2 and "not UTF-8 text" in r.stderr


def test_missing_or_damaged_keys_are_not_a_wrong_password(tmp_path: Path, setup) -> None:
    repo, _ = setup
    fails(tmp_path, 12, "backup", "snapshots", "--repo", str(repo),
          env=env_for(tmp_path, password="not it"))
    damaged = tmp_path / "damaged"
    shutil.copytree(repo, damaged)
    for k in (damaged / "keys").iterdir():
        k.write_bytes(k.read_bytes()[:50])
    assert "every key object is damaged" in fails(tmp_path, 13, "backup", "snapshots",
                                                  "--repo", str(damaged))
    for k in (damaged / "keys").iterdir():
        k.unlink()
    assert "no key objects" in fails(tmp_path, 13, "backup", "snapshots", "--repo",
                                     str(damaged))


def test_a_damaged_snapshot_does_not_hide_the_others(tmp_path: Path, setup) -> None:
    repo, src = setup
    bad = cli_json(tmp_path, "backup", "run", "--repo", str(repo), str(src))["snapshot"]
    (repo / "snapshots" / bad).write_text("junk")
    r = subprocess.run([*CLI, "backup", "snapshots", "--repo", str(repo), "--json"],
                       capture_output=True, text=True, env=env_for(tmp_path), timeout=120)
    assert r.returncode == 13
    assert len(json.loads(r.stdout)) == 1
    assert f"snapshot {bad[:16]} cannot be read" in r.stderr
    only_bad = tmp_path / "onlybad"
    shutil.copytree(repo, only_bad)
    for s in (only_bad / "snapshots").iterdir():
        s.write_text("junk")
    assert "no readable snapshot" in fails(tmp_path, 13, "backup", "ls", "latest", "--repo",
                                           str(only_bad))


def test_arguments_that_select_nothing(tmp_path: Path, setup) -> None:
    repo, src = setup
    assert "no snapshot 'deadbeef'" in fails(tmp_path, 2, "backup", "ls", "deadbeef",
                                             "--repo", str(repo))
    assert "no repository here" in fails(tmp_path, 10, "backup", "unlock", "--repo",
                                         str(src))
    assert "matches nothing" in fails(tmp_path, 2, "backup", "restore", "latest", "--repo",
                                      str(repo), "--target", str(tmp_path / "t"),
                                      "--include", "sub/b.txt")
    assert "every path to back up is excluded" in fails(
        tmp_path, 2, "backup", "run", "--repo", str(repo), str(src), "--exclude", "src")
    for bad in ("", "a,b", "x\ny"):
        fails(tmp_path, 2, "backup", "run", "--repo", str(repo), str(src), "--tag", bad)
    assert snapshot_count(repo) == 1
    out = cli_json(tmp_path, "backup", "run", "--repo", str(repo), str(src), "--tag", "a",
                   "--tag", "a")
    snaps = cli_json(tmp_path, "backup", "snapshots", "--repo", str(repo))
    assert [s["tags"] for s in snaps if s["id"] == out["snapshot"]] == [["a"]]


def test_a_repository_inside_the_tree_is_not_backed_up_into_itself(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "data").mkdir(parents=True)
    (tree / "data" / "f.bin").write_bytes(os.urandom(100_000))
    repo = tree / "repo"
    cli(tmp_path, "backup", "init", "--repo", str(repo))
    first = cli_json(tmp_path, "backup", "run", "--repo", str(repo), str(tree))
    second = cli_json(tmp_path, "backup", "run", "--repo", str(repo), str(tree))
    assert first["files"] == second["files"] == 1
    assert second["added_bytes"] < 8192  # a tree and the snapshot, no packs of the repo


def test_each_error_is_printed_once(tmp_path: Path, setup) -> None:
    repo, src = setup
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "agent.sock"))
    named = socket.socket(socket.AF_UNIX)
    named.bind(str(tmp_path / "named.sock"))
    try:
        r = cli(tmp_path, "backup", "run", "--repo", str(repo), str(src),
                str(tmp_path / "named.sock"), check=False)
    finally:
        sock.close()
        named.close()
    assert r.returncode == 3  # a socket asked for by name cannot be saved
    assert r.stderr.count("named.sock") == 1, r.stderr
    # a socket below the paths is no error: counted, said once
    assert "agent.sock" not in r.stderr
    assert r.stdout.count("1 socket(s) skipped: they hold no data") == 1, r.stdout


def test_key_add_names_the_option_of_an_empty_file(tmp_path: Path, setup) -> None:
    repo, _ = setup
    empty = tmp_path / "empty"
    empty.write_text("")
    assert "--new-password-file" in fails(tmp_path, 2, "backup", "key", "add", "--repo",
                                          str(repo), "--new-password-file", str(empty))


def test_ls_prints_one_line_per_entry_whatever_the_names(tmp_path: Path) -> None:
    src = tmp_path / "names"
    src.mkdir()
    for raw in (b"two\nlines", b"esc\x1b[31mred", b"bad\xff\xfe"):
        with open(os.fsencode(src) + b"/" + raw, "wb") as f:
            f.write(b"x")
    repo = tmp_path / "repo"
    cli(tmp_path, "backup", "init", "--repo", str(repo))
    cli(tmp_path, "backup", "run", "--repo", str(repo), str(src))
    out = cli(tmp_path, "backup", "ls", "latest", "--repo", str(repo)).stdout
    names = [line.rsplit("/", 1)[1] for line in out.splitlines() if line.startswith("f ")]
    assert sorted(names) == sorted(["two\\nlines", "esc\\x1b[31mred", "bad\\xff\\xfe"])
    assert "\x1b" not in out


def test_json_errors_are_json_on_stdout(tmp_path: Path, setup) -> None:
    repo, src = setup
    cases = [
        # (exit code, arguments): the fast path, a Typer command, a usage error
        (10, ("backup", "run", "--repo", str(tmp_path / "none"), str(src), "--json")),
        (10, ("backup", "snapshots", "--repo", str(tmp_path / "none"), "--json")),
        (2, ("backup", "verify", "--repo", str(repo), "--json", "--bogus")),
        (2, ("backup", "restore", "latest", "--repo", str(repo), "--target",
             str(tmp_path / "out"), "--include", "/nothing*", "--json")),
    ]
    cli(tmp_path, "backup", "run", "--repo", str(repo), str(src))
    for code, args in cases:
        r = cli(tmp_path, *args, check=False)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        out = json.loads(r.stdout)
        assert out["exit_code"] == code and out["error"], args
        assert out["error"] in r.stderr or "--bogus" in r.stderr, args
    # without --json stdout stays empty (the error is on stderr only)
    r = cli(tmp_path, "backup", "snapshots", "--repo", str(tmp_path / "none"), check=False)
    assert r.returncode == 10 and r.stdout == ""
