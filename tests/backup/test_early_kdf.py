"""The key derived as the process starts: used only when it is exactly what the usual
derivation would compute, and then the repository opens as always."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm_maint.backup import early_kdf, kdf
from swarm_maint.backup.errors import WrongPasswordError
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.storage import LocalStorage

PASSWORD = "early bird"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    Repository.init(LocalStorage(tmp_path / "repo"), PASSWORD)
    return tmp_path / "repo"


@pytest.fixture(autouse=True)
def nothing_pending(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SWARM_MAINT_PASSWORD", PASSWORD)
    early_kdf.take("", b"")  # none left by another test
    yield
    early_kdf.take("", b"")


def key_object(repo: Path) -> bytes:
    storage = LocalStorage(repo)
    return storage.read(storage.list("keys/")[0])


def usual(repo: Path, password: str = PASSWORD) -> bytes:
    obj = kdf.parse_key_object(key_object(repo))
    return kdf.derive(password, obj.salt, obj.n, obj.r, obj.p)


@pytest.mark.parametrize("argv", [
    ["backup", "run", "--repo", "{repo}", "/data"],
    ["backup", "run", "-r", "{repo}", "/data"],
    ["backup", "restore", "--repo={repo}", "latest", "--target", "/t"],
])
def test_derived_early_is_what_the_usual_derivation_gives(repo: Path, argv: list[str]) -> None:
    early_kdf.start([a.format(repo=repo) for a in argv])
    assert early_kdf.take(PASSWORD, key_object(repo)) == usual(repo)
    assert early_kdf.take(PASSWORD, key_object(repo)) is None  # taken once


def test_other_password_or_key_object_is_not_taken(repo: Path) -> None:
    early_kdf.start(["backup", "run", "--repo", str(repo), "/data"])
    assert early_kdf.take("another password", key_object(repo)) is None
    early_kdf.start(["backup", "run", "--repo", str(repo), "/data"])
    changed = key_object(repo).replace(b"{", b"{ ", 1)  # the same fields, other bytes
    assert kdf.parse_key_object(changed) == kdf.parse_key_object(key_object(repo))
    assert early_kdf.take(PASSWORD, changed) is None


@pytest.mark.parametrize("argv", [
    ["backup", "snapshots", "--repo", "{repo}"],  # not a command that starts it
    ["backup", "run", "--repo", "{repo}", "--password-file", "/pw", "/data"],
    ["backup", "run", "--repo", "{repo}/nowhere", "/data"],
    ["backup", "run", "/data"],
    ["run", "backup", "--repo", "{repo}"],
])
def test_started_only_for_a_local_repository_and_the_environment_password(
        repo: Path, argv: list[str]) -> None:
    early_kdf.start([a.format(repo=repo) for a in argv])
    assert early_kdf.take(PASSWORD, key_object(repo)) is None


def test_no_password_in_the_environment(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWARM_MAINT_PASSWORD")
    early_kdf.start(["backup", "run", "--repo", str(repo), "/data"])
    assert early_kdf.take(PASSWORD, key_object(repo)) is None


def test_a_key_object_it_cannot_read_leaves_the_usual_derivation(repo: Path) -> None:
    (path,) = (repo / "keys").iterdir()
    good = path.read_bytes()
    path.write_bytes(b"not json")
    early_kdf.start(["backup", "run", "--repo", str(repo), "/data"])
    assert early_kdf.take(PASSWORD, b"not json") is None  # waits for it: it failed
    path.write_bytes(good)
    storage = LocalStorage(repo)
    assert kdf.derive_first_key(storage, PASSWORD) == {storage.list("keys/")[0]: usual(repo)}


def test_a_wrong_password_is_still_refused(repo: Path) -> None:
    early_kdf.start(["backup", "run", "--repo", str(repo), "/data"])
    storage = LocalStorage(repo)
    with pytest.raises(WrongPasswordError):
        Repository.open(storage, "wrong", derived=kdf.derive_first_key(storage, "wrong"))
    # the early key was for the right password, and is gone with that attempt
    assert early_kdf.take(PASSWORD, key_object(repo)) is None


def test_the_command_line_derives_early_and_opens(repo: Path, tmp_path: Path) -> None:
    """A real process: `backup run` starts the early derivation, takes it, and backs up;
    with a wrong password in the environment the key derived early is wrong too, and the
    repository is refused as always."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    probe = ("import sys, runpy\n"
             "from swarm_maint.backup import early_kdf\n"
             "taken = []\n"
             "take = early_kdf.take\n"
             "def spy(password, raw):\n"
             "    kek = take(password, raw)\n"
             "    taken.append(kek is not None)\n"
             "    return kek\n"
             "early_kdf.take = spy\n"
             "from swarm_maint.cli.main import main\n"
             "code = main()\n"
             "print('TAKEN', taken, file=sys.stderr)\n"
             "sys.exit(code)\n")
    env_ok = {"SWARM_MAINT_PASSWORD": PASSWORD, "XDG_STATE_HOME": str(tmp_path / "state")}
    argv = [sys.executable, "-c", probe, "backup", "run", "--repo", str(repo), str(data)]
    ok = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                        env={**os.environ, **env_ok})
    assert ok.returncode == 0, ok.stderr
    assert "TAKEN [True]" in ok.stderr
    bad = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env_ok, "SWARM_MAINT_PASSWORD": "wrong"})
    assert bad.returncode == WrongPasswordError.exit_code, bad.stderr
    assert "wrong password" in bad.stderr and "TAKEN [True]" in bad.stderr
