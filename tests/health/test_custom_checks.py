"""Custom checks run real scripts: exit codes, messages, timeouts that kill the whole
process group, and commands that cannot run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from swarm_maint.config import HealthConfig
from swarm_maint.health.check import FrameSamples, HealthContext
from swarm_maint.health.checks import custom
from swarm_maint.monitoring.hub import Frame


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def checks_for(*entries: dict[str, Any]) -> list[custom.CustomCheck]:
    ctx = HealthContext(config=HealthConfig(custom=list(entries)),
                        frame=lambda: FrameSamples(Frame(0.0, (), 0)))
    made = custom.create(ctx)
    assert all(isinstance(c, custom.CustomCheck) for c in made)
    return [c for c in made if isinstance(c, custom.CustomCheck)]


@pytest.mark.parametrize(("code", "status", "action"), [
    (0, "OK", None), (1, "WARNING", "drain_node"), (2, "CRITICAL", "drain_node"),
    (3, "UNKNOWN", "drain_node"), (42, "UNKNOWN", "drain_node"),
])
def test_exit_codes_and_messages(tmp_path: Path, code: int, status: str,
                                 action: str | None) -> None:
    path = script(tmp_path, "check.sh",
                  f'echo "\n  infiniband port mlx5_0/1 is {code}  "\necho second line\n'
                  f"exit {code}\n")
    (check,) = checks_for({"name": "ib-port", "command": [str(path)], "action": "drain_node"})
    result = check.run()
    assert result.check == "ib-port"
    assert (result.status, result.action) == (status, action)
    assert result.message == f"infiniband port mlx5_0/1 is {code}"
    assert result.details["exit_code"] == code


def test_arguments_are_passed_without_a_shell(tmp_path: Path) -> None:
    path = script(tmp_path, "args.sh", 'echo "got [$1] [$2]"\n')
    (check,) = checks_for({"name": "args", "command": [str(path), "a b", "$HOME;*"]})
    assert check.run().message == "got [a b] [$HOME;*]"


def test_message_falls_back_to_stderr_then_the_exit_code(tmp_path: Path) -> None:
    err = script(tmp_path, "err.sh", 'echo "disk /dev/sdb missing" >&2\nexit 2\n')
    quiet = script(tmp_path, "quiet.sh", "exit 1\n")
    c_err, c_quiet = checks_for({"name": "err", "command": [str(err)]},
                                {"name": "quiet", "command": [str(quiet)]})
    r = c_err.run()
    assert (r.status, r.message, r.action) == ("CRITICAL", "disk /dev/sdb missing",
                                               "investigate")
    r = c_quiet.run()
    assert (r.status, r.message) == ("WARNING", "exit code 1")


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                out.append(int(entry.name))
    return out


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    path = script(tmp_path, "hang.sh",
                  f"sleep 300 &\necho $! > {pidfile}\necho started\nsleep 300\n")
    (check,) = checks_for({"name": "hang", "command": [str(path)], "timeout": "1s",
                           "interval": "2m"})
    assert (check.interval, check.command_timeout) == (120.0, 1.0)
    assert check.timeout > check.command_timeout  # room for the runner to wait on the kill
    t0 = time.monotonic()
    result = check.run()
    elapsed = time.monotonic() - t0
    assert result.status == "UNKNOWN"
    assert result.message == "timed out after 1s (killed)"
    assert result.action is None
    assert elapsed < 4
    child = int(pidfile.read_text())
    parent = result.details["pid"]
    deadline = time.monotonic() + 3
    while (_alive(child) or _alive(parent)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the background sleeper survived the timeout"
    assert not _alive(parent)
    # nothing of the group runs any more (zombies left for an init that does not reap
    # them, as in some containers, are dead already)
    assert [pid for pid in _group_members(parent) if _alive(pid)] == []


def test_commands_that_cannot_run(tmp_path: Path) -> None:
    not_exec = tmp_path / "plain.sh"
    not_exec.write_text("#!/bin/sh\nexit 0\n")
    missing, denied = checks_for(
        {"name": "missing", "command": [str(tmp_path / "no-such-tool"), "--x"]},
        {"name": "denied", "command": [str(not_exec)]})
    r = missing.run()
    assert (r.status, r.action) == ("UNKNOWN", None)
    assert r.message == f"command not found: {tmp_path / 'no-such-tool'}"
    r = denied.run()
    assert r.status == "UNKNOWN"
    assert r.message.startswith("command not executable")
    (bare,) = checks_for({"name": "bare", "command": ["swarm-maint-no-such-command-xyz"]})
    assert bare.run().message == "command not found: swarm-maint-no-such-command-xyz"


def test_killed_by_a_signal(tmp_path: Path) -> None:
    path = script(tmp_path, "selfkill.sh", "kill -TERM $$\n")
    (check,) = checks_for({"name": "selfkill", "command": [str(path)]})
    r = check.run()
    assert (r.status, r.message) == ("UNKNOWN", "killed by signal 15")


def test_one_check_per_entry_with_its_interval() -> None:
    made = checks_for({"name": "a", "command": ["true"], "interval": "10s"},
                      {"name": "b", "command": ["false"], "interval": "5m"})
    assert [(c.name, c.level, c.interval) for c in made] == [("a", 1, 10.0), ("b", 1, 300.0)]
    assert checks_for() == []
