"""``backup run`` and ``backup restore`` start without Typer, and mean the same as with it."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from swarm_maint.cli import backup_cmd, backup_ops, fast_path
from swarm_maint.cli.main import build_app, main
from tests.backup.cli_util import cli, env_for
from tests.backup.test_memory import COUNT_ARENAS


def _click_command(words: tuple[str, ...]) -> Any:
    group = typer.main.get_command(build_app(words[0]))
    cmd: Any = group
    for w in words:
        cmd = cmd.commands[w]  # type: ignore[attr-defined]
    return cmd


@pytest.mark.parametrize("command", fast_path.COMMANDS, ids=lambda c: " ".join(c.words))
def test_options_match_the_typer_command(command: fast_path.Command) -> None:
    click_cmd = _click_command(command.words)
    options = {p.name: p for p in click_cmd.params if p.opts[0].startswith("-")}
    arguments = [p for p in click_cmd.params if not p.opts[0].startswith("-")]
    assert {o.dest for o in command.options} == set(options)
    for opt in command.options:
        p = options[opt.dest]
        assert set(opt.names) == set(p.opts) and not p.secondary_opts, opt
        assert (opt.kind == "flag") == bool(p.is_flag), opt
        assert (opt.kind == "multi") == bool(p.multiple), opt
        assert opt.required == bool(p.required), opt
    assert [a.name for a in arguments] == [command.positional]
    assert (arguments[0].nargs == -1) == command.many
    assert arguments[0].required


@pytest.mark.parametrize("command", fast_path.COMMANDS, ids=lambda c: " ".join(c.words))
def test_defaults_match_the_typer_command(command: fast_path.Command) -> None:
    """An option left out means the same on both paths."""
    click_cmd = _click_command(command.words)
    sig = inspect.signature(getattr(backup_ops, command.target))
    for p in click_cmd.params:
        if p.required:
            continue
        ours = sig.parameters[p.name].default
        theirs = p.default
        if p.multiple:
            assert theirs in (None, ()) and ours == (), p.name
        else:
            assert ours == theirs, p.name


RUN_ARGS = [
    ["backup", "run", "--repo", "/r", "/data"],
    ["backup", "run", "-r", "/r", "/a", "/b", "--json"],
    ["backup", "run", "/a", "--repo=/r", "--tag", "daily", "--tag=weekly",
     "--exclude", "*.tmp", "--one-file-system", "--no-lease", "--password-file", "/pw",
     "-c", "/cfg.toml"],
    ["backup", "run", "--exclude=*.ckpt", "--repo", "/r", "rel/dir", "--config=/c.toml"],
]
RESTORE_ARGS = [
    ["backup", "restore", "latest", "--repo", "/r", "--target", "/t"],
    ["backup", "restore", "--repo=/r", "--target=out", "abc123", "--include", "a/*",
     "--include=b", "--json", "--password-file=/pw", "--config", "/c.toml"],
]


def _typer_kwargs(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def capture(*args: Any, **kwargs: Any) -> int:
        names = ["paths", "repo"] if argv[1] == "run" else ["snapshot", "repo", "target"]
        seen.update(zip(names, args, strict=False), **kwargs)
        return 0

    monkeypatch.setattr(backup_cmd, "backup_run", capture)
    monkeypatch.setattr(backup_cmd, "backup_restore", capture)
    assert main(["--debug", *argv]) == 0  # a global option: the Typer path
    return seen


def _normal(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        out[k] = tuple(v) if isinstance(v, (list, tuple)) and k != "paths" else v
    return {k: v for k, v in out.items() if v not in ((), None, False)}


@pytest.mark.parametrize("argv", RUN_ARGS + RESTORE_ARGS, ids=" ".join)
def test_same_call_as_typer(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    call = fast_path.parse(argv)
    assert call is not None
    assert call.command.target == ("backup_run" if argv[1] == "run" else "backup_restore")
    assert _normal(call.kwargs) == _normal(_typer_kwargs(argv, monkeypatch))


@pytest.mark.parametrize("argv", [
    ["backup", "run", "--help"],
    ["backup", "run", "--repo", "/r"],  # no path
    ["backup", "run", "/data"],  # no --repo
    ["backup", "run", "--repo", "/r", "--bogus", "/data"],
    ["backup", "run", "--rep", "/r", "/data"],  # click would not guess either
    ["backup", "run", "--repo", "/r", "--", "/data"],
    ["backup", "run", "--repo", "-x", "/data"],  # a value that looks like an option
    ["backup", "run", "--repo", "/r", "/data", "--tag"],  # no value
    ["backup", "run", "--repo=", "/data"],
    ["backup", "run", "--json=yes", "--repo", "/r", "/data"],
    ["backup", "run", "-r/r", "/data"],
    ["backup", "run", "--repo", "/r", "-"],
    ["backup", "run", "--repo", "/r", ""],
    ["--debug", "backup", "run", "--repo", "/r", "/data"],
    ["backup", "restore", "latest", "--repo", "/r"],  # no --target
    ["backup", "restore", "a", "b", "--repo", "/r", "--target", "/t"],
    ["backup", "snapshots", "--repo", "/r"],
    ["backup"],
    [],
])
def test_anything_else_goes_to_typer(argv: list[str]) -> None:
    assert fast_path.parse(argv) is None


def test_a_directory_as_password_file_goes_to_typer(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["backup", "run", "--repo", "/r", "--password-file", str(tmp_path), "/data"]
    assert fast_path.parse(argv) is None
    assert main(argv) == 2  # Typer's usage error, as before the fast path existed
    assert "directory" in capsys.readouterr().err


def test_usage_errors_are_typer_s(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup", "run", "--repo", "/r", "--bogus", "/data"]) == 2
    assert "No such option" in capsys.readouterr().err
    assert main(["backup", "run", "--repo", "/r"]) == 2
    assert "Missing argument" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_130(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(backup_ops, "backup_run", interrupted)
    assert main(["backup", "run", "--repo", "/r", "/data"]) == 130
    assert capsys.readouterr().err.strip() == "swarm-maint: aborted"


def test_a_real_backup_and_restore_load_neither_typer_nor_pydantic(tmp_path: Path) -> None:
    """What the fast path is for: the process never imports the CLI framework, nor
    modules that cost start-up time for nothing: psutil (leases need it only for a gone
    holder), subprocess (ctypes.util.find_library runs ldconfig), the blosc package (its
    __init__ imports its test suite; only its extension module is loaded). Both keep
    one malloc arena for all their threads (memory.py)."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.json").write_text('{"x": 1}\n')
    (data / "b.bin").write_bytes(bytes(range(256)) * 5000)
    repo = str(tmp_path / "repo")
    cli(tmp_path, "backup", "init", "--repo", repo)
    probe = (COUNT_ARENAS + "import json, sys\n"
             "from swarm_maint.cli.main import main\n"
             "rc = main(sys.argv[1:])\n"
             # glibc's arenas after the run: one, however many threads the run had
             "arenas = count_arenas()\n"
             "sys.stderr.write(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules}"
             " & {'typer', 'pydantic', 'click', 'rich'}), sorted(set(sys.modules)"
             " & {'psutil', 'subprocess', 'unittest', 'numpy', 'blosc'}), arenas]))\n")
    env = env_for(tmp_path)
    for argv in (["backup", "run", "--repo", repo, "--json", str(data)],
                 ["backup", "restore", "latest", "--repo", repo, "--target",
                  str(tmp_path / "out"), "--json"]):
        r = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True,
                           text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
        rc, frameworks, slow, arenas = json.loads(r.stderr.strip().splitlines()[-1])
        assert rc == 0, r.stderr
        assert frameworks == [], argv
        assert slow == [], argv
        assert arenas == 1, argv  # backup and restore both keep one malloc arena
        json.loads(r.stdout)  # the --json summary
    restored = tmp_path / "out" / data.relative_to("/")
    assert (restored / "b.bin").read_bytes() == (data / "b.bin").read_bytes()
    assert (restored / "sub" / "a.json").read_text() == '{"x": 1}\n'


def test_zstandard_loads_only_when_a_blob_is_stored_or_read(tmp_path: Path) -> None:
    """The compressor is imported where it is first needed: a re-run of unchanged data
    stores no blob (its trees are stored already) and never loads it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("compressible text\n" * 2000)
    os.utime(data / "notes.txt", ns=(10**18, 10**18))  # old enough for the files cache
    repo = str(tmp_path / "repo")
    cli(tmp_path, "backup", "init", "--repo", repo)
    # the state directory beside the data made before the first run: the second then
    # sees every directory as the first did, ancestors included
    (tmp_path / "state").mkdir(exist_ok=True)
    probe = ("import sys\n"
             "from swarm_maint.cli.main import main\n"
             "rc = main(sys.argv[1:])\n"
             "sys.stderr.write(f'{rc} {\"zstandard\" in sys.modules}\\n')\n")
    env = env_for(tmp_path)

    def loaded(*argv: str) -> bool:
        r = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True,
                           text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
        rc, seen = r.stderr.strip().splitlines()[-1].split()
        assert rc == "0", r.stderr
        return seen == "True"

    run = ("backup", "run", "--repo", repo, "--json", str(data))
    assert loaded(*run)  # new text: compressed
    assert not loaded(*run)  # unchanged
    assert loaded("backup", "restore", "latest", "--repo", repo, "--target",
                  str(tmp_path / "out"))  # the text and the trees are decompressed
    assert (tmp_path / "out" / data.relative_to("/") / "notes.txt").read_text() == (
        "compressible text\n" * 2000)


def test_the_scan_loads_none_of_the_engine_s_native_modules() -> None:
    """``backup run`` scans while other threads derive the key and load the engine: the
    scan must not wait for those imports (cryptography, zstandard, blake3, pyfastcdc,
    c-blosc)."""
    probe = ("import sys\n"
             "from swarm_maint.backup.scan import Scan\n"
             "Scan([sys.prefix])\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'cryptography', "
             "'zstandard', 'blake3', 'pyfastcdc', 'blosc'}))\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=60, check=True)
    assert r.stdout.strip() == "[]"


def test_a_finished_fast_command_ends_without_the_interpreter_s_teardown(
        tmp_path: Path) -> None:
    """After a fast-path backup or restore returns, the process ends at once (no atexit
    handlers, no freeing of every object), with its output complete and nothing it
    wrote left open; an error, or any other command, still ends the ordinary way."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "weights.bin").write_bytes(bytes(range(256)) * 40_000)
    repo = tmp_path / "repo"
    cli(tmp_path, "backup", "init", "--repo", str(repo))
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: sys.stderr.write('interpreter teardown\\n'))\n"
             "sys.argv = ['swarm-maint', *sys.argv[1:]]\n"
             "from swarm_maint.cli.main import run\n"
             "run()\n")

    def entry(*argv: str, password: str = "s3cret pass") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True,
                              text=True, env=env_for(tmp_path, password), timeout=120,
                              stdin=subprocess.DEVNULL)

    backup = entry("backup", "run", "--repo", str(repo), "--json", str(data))
    assert backup.returncode == 0, backup.stderr
    assert "interpreter teardown" not in backup.stderr
    summary = json.loads(backup.stdout)  # flushed before the end
    assert summary["files"] == 1 and not summary["partial"]
    assert not list((repo / "locks").iterdir())  # the lock was released
    # the files cache was committed: the next run reads nothing again
    again = entry("backup", "run", "--repo", str(repo), "--json", str(data))
    assert again.returncode == 0 and json.loads(again.stdout)["added_bytes"] < 4096
    restore = entry("backup", "restore", "latest", "--repo", str(repo), "--target",
                    str(tmp_path / "out"))
    assert restore.returncode == 0 and "interpreter teardown" not in restore.stderr
    assert restore.stdout.startswith("restored 1 files")
    assert ((tmp_path / "out" / data.relative_to("/") / "weights.bin").read_bytes()
            == (data / "weights.bin").read_bytes())
    # an error ends the ordinary way, with its exit code; so does any other command
    wrong = entry("backup", "run", "--repo", str(repo), str(data), password="not it")
    assert wrong.returncode != 0 and "interpreter teardown" in wrong.stderr
    listing = entry("backup", "snapshots", "--repo", str(repo), "--json")
    assert listing.returncode == 0 and "interpreter teardown" in listing.stderr
    assert len(json.loads(listing.stdout)) == 2
