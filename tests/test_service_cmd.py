"""``swarm-maint service install|uninstall`` as real CLI processes, a recording systemctl,
the real ``systemd-analyze verify``, and the agent started exactly as the unit starts it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm_maint.deploy import (
    SYSTEM_STATE_DIR,
    default_executable,
    quote_arg,
    render_unit,
    split_exec_start,
)
from tests.agent_proc import CLI, wait_ready
from tests.live_server import free_port

UNIT = "swarm-maint.service"

RECORDER = """#!/bin/sh
# stands for systemctl: records its arguments; fails the verb named in $FAKE_SYSTEMCTL_FAIL
printf '%s\\n' "$*" >> '{log}'
for a in "$@"; do
  case "$a" in --*) ;; *) verb="$a"; break ;; esac
done
if [ -n "$FAKE_SYSTEMCTL_FAIL" ] && [ "$verb" = "$FAKE_SYSTEMCTL_FAIL" ]; then
  echo "Failed to $verb unit: Access denied" >&2
  echo "See system logs and 'systemctl status' for details." >&2
  exit 4
fi
"""


@dataclass
class Env:
    tmp: Path
    unit_dir: Path
    systemctl: Path
    log: Path
    config: Path

    @property
    def unit(self) -> Path:
        return self.unit_dir / UNIT

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def run(self, *args: str, fail: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "XDG_STATE_HOME": str(self.tmp / "xdg"),
               "XDG_CONFIG_HOME": str(self.tmp / "xdg-config")}
        env.pop("SWARM_MAINT_CONFIG", None)
        env.pop("FAKE_SYSTEMCTL_FAIL", None)
        if fail:
            env["FAKE_SYSTEMCTL_FAIL"] = fail
        return subprocess.run([*CLI, "service", *args], capture_output=True, text=True,
                              timeout=60, env=env)

    def install(self, *args: str, fail: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("install", "--unit-dir", str(self.unit_dir), "--systemctl",
                        str(self.systemctl), *args, fail=fail)

    def uninstall(self, *args: str, fail: str | None = None
                  ) -> subprocess.CompletedProcess[str]:
        return self.run("uninstall", "--unit-dir", str(self.unit_dir), "--systemctl",
                        str(self.systemctl), *args, fail=fail)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    log = tmp_path / "systemctl.log"
    systemctl = tmp_path / "bin" / "systemctl"
    systemctl.parent.mkdir()
    systemctl.write_text(RECORDER.format(log=log))
    systemctl.chmod(0o755)
    config = tmp_path / "etc" / "config.toml"
    config.parent.mkdir()
    config.write_text('[agent]\nnode_name = "gpu-node-17"\n\n[updates]\nenabled = false\n')
    return Env(tmp_path, tmp_path / "units", systemctl, log, config)


def exec_start(unit_text: str) -> list[str]:
    lines = [ln for ln in unit_text.splitlines() if ln.startswith("ExecStart=")]
    assert len(lines) == 1, unit_text
    return split_exec_start(lines[0].removeprefix("ExecStart="))


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.stderr.startswith("swarm-maint: error: "), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr


def test_install_writes_the_unit_reloads_enables_and_starts(env: Env) -> None:
    r = env.install("--config", str(env.config), "--json")
    assert r.returncode == 0, r.stderr
    exe = default_executable()
    assert len(exe) == 1
    assert os.path.isabs(exe[0])
    assert os.access(exe[0], os.X_OK)
    argv = [exe[0], "agent", "--config", str(env.config), "--state-dir", str(SYSTEM_STATE_DIR)]

    text = env.unit.read_text()
    assert exec_start(text) == argv
    for line in ("Type=exec", "Restart=on-failure", "RestartSec=5s", "KillSignal=SIGTERM",
                 "TimeoutStopSec=30s", "StateDirectory=swarm-maint", "LimitNOFILE=65536",
                 "After=network-online.target", "Wants=network-online.target",
                 "WantedBy=multi-user.target"):
        assert line in text.splitlines(), line
    assert "@" not in text  # every template marker was replaced
    assert stat.S_IMODE(env.unit.stat().st_mode) == 0o644
    assert sorted(p.name for p in env.unit_dir.iterdir()) == [UNIT]  # no temporary left
    assert env.calls() == ["daemon-reload", f"enable --now {UNIT}"]

    out = json.loads(r.stdout)
    warnings = out.pop("warnings")
    assert out == {"unit": str(env.unit), "user": False, "exec_start": argv, "enabled": True,
                   "started": True, "replaced": False,
                   "commands": [[str(env.systemctl), "daemon-reload"],
                                [str(env.systemctl), "enable", "--now", UNIT]]}
    # the config leaves agent.state_dir at its default: the CLI would not see the agent's state
    assert len(warnings) == 1
    assert f'agent.state_dir = "{SYSTEM_STATE_DIR}"' in warnings[0]
    assert r.stderr == f"swarm-maint: warning: {warnings[0]}\n"


def test_a_config_with_its_own_state_dir_is_followed(env: Env) -> None:
    own = env.tmp / "own.toml"
    own.write_text(f'[agent]\nstate_dir = "{env.tmp / "st"}"\n')
    r = env.install("--config", str(own), "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert exec_start(env.unit.read_text())[1:] == ["agent", "--config", str(own)]
    assert json.loads(r.stdout)["warnings"] == []


def test_failing_enable_leaves_no_unit(env: Env) -> None:
    r = env.install("--config", str(env.config), fail="enable")
    assert r.returncode == 7
    err = one_line_error(r)
    assert f"enable --now {UNIT}` failed (exit 4): Failed to enable unit: Access denied" in err
    assert "removed again" in err
    assert list(env.unit_dir.iterdir()) == []
    assert env.calls() == ["daemon-reload", f"enable --now {UNIT}", f"disable {UNIT}",
                           "daemon-reload"]


def test_failing_daemon_reload_and_missing_systemctl_leave_no_unit(env: Env) -> None:
    r = env.install("--config", str(env.config), fail="daemon-reload")
    assert r.returncode == 7
    assert "daemon-reload` failed" in one_line_error(r)
    assert list(env.unit_dir.iterdir()) == []

    r = env.run("install", "--config", str(env.config), "--unit-dir", str(env.unit_dir),
                "--systemctl", str(env.tmp / "no-such-systemctl"))
    assert r.returncode == 7
    assert "no-such-systemctl: not found" in one_line_error(r)
    assert list(env.unit_dir.iterdir()) == []


def test_reinstall_restarts_a_changed_unit_and_puts_it_back_on_failure(env: Env) -> None:
    assert env.install("--config", str(env.config)).returncode == 0
    first = env.unit.read_text()
    env.log.unlink()

    # the same unit again: nothing to restart
    r = env.install("--config", str(env.config))
    assert r.returncode == 0, r.stderr
    assert env.calls() == ["daemon-reload", f"enable --now {UNIT}"]
    env.log.unlink()

    # a changed unit whose restart fails: the previous unit is put back
    state = env.tmp / "other state"
    r = env.install("--config", str(env.config), "--state-dir", str(state), fail="restart")
    assert r.returncode == 7
    err = one_line_error(r)
    assert "restart" in err
    assert "the previous" in err
    assert env.unit.read_text() == first
    assert env.calls() == ["daemon-reload", f"enable {UNIT}", f"restart {UNIT}",
                           "daemon-reload"]
    env.log.unlink()

    # the same change succeeding: enabled, then restarted so the agent runs the new unit
    r = env.install("--config", str(env.config), "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    assert "replaced" in r.stdout
    assert exec_start(env.unit.read_text())[-2:] == ["--state-dir", str(state)]
    assert env.calls() == ["daemon-reload", f"enable {UNIT}", f"restart {UNIT}"]


@pytest.mark.parametrize(("flags", "calls"), [
    (["--no-start"], ["daemon-reload", f"enable {UNIT}"]),
    (["--no-enable"], ["daemon-reload", f"start {UNIT}"]),
    (["--no-enable", "--no-start"], ["daemon-reload"]),
])
def test_no_enable_no_start(env: Env, flags: list[str], calls: list[str]) -> None:
    r = env.install("--config", str(env.config), *flags)
    assert r.returncode == 0, r.stderr
    assert env.unit.is_file()
    assert env.calls() == calls


def test_uninstall_disables_stops_and_removes(env: Env) -> None:
    assert env.install("--config", str(env.config)).returncode == 0
    env.log.unlink()
    r = env.uninstall("--json")
    assert r.returncode == 0, r.stderr
    assert not env.unit.exists()
    assert env.calls() == [f"disable --now {UNIT}", "daemon-reload"]
    assert json.loads(r.stdout)["removed"] is True

    r = env.uninstall()
    assert r.returncode == 7
    assert f"{env.unit}: {UNIT} is not installed there" in one_line_error(r)


def test_uninstall_keeps_the_unit_when_disable_fails(env: Env) -> None:
    assert env.install("--config", str(env.config)).returncode == 0
    r = env.uninstall(fail="disable")
    assert r.returncode == 7
    assert "Access denied" in one_line_error(r)
    assert env.unit.is_file()


@pytest.mark.parametrize(("content", "problem"), [
    ("[agent]\nlisten = 'nowhere'\n", "agent.listen"),
    ("[agent\n", "TOML syntax error"),
    (None, "config file not found"),
])
def test_invalid_config_exits_2_and_writes_nothing(env: Env, content: str | None,
                                                   problem: str) -> None:
    bad = env.tmp / "bad.toml"
    if content is not None:
        bad.write_text(content)
    for extra in ([], ["--user"], ["--state-dir", str(env.tmp / "s")], ["--print"]):
        r = env.install("--config", str(bad), *extra)
        assert r.returncode == 2, (extra, r.stderr)
        err = one_line_error(r)
        assert str(bad) in err
        assert problem in err
        assert not env.unit_dir.exists()
        assert env.calls() == []
        assert r.stdout == ""


def test_print_writes_and_runs_nothing(env: Env) -> None:
    r = env.install("--config", str(env.config), "--print")
    assert r.returncode == 0, r.stderr
    assert exec_start(r.stdout) == [*default_executable(), "agent", "--config", str(env.config),
                                    "--state-dir", str(SYSTEM_STATE_DIR)]
    assert "WantedBy=multi-user.target" in r.stdout
    assert not env.unit_dir.exists()
    assert env.calls() == []


def test_user_unit(env: Env) -> None:
    r = env.install("--config", str(env.config), "--user")
    assert r.returncode == 0, r.stderr
    text = env.unit.read_text()
    assert exec_start(text)[1:] == ["agent", "--config", str(env.config)]  # XDG state dir
    assert "WantedBy=default.target" in text.splitlines()
    for absent in ("StateDirectory", "multi-user.target", "network-online.target"):
        assert absent not in text
    assert env.calls() == ["--user daemon-reload", f"--user enable --now {UNIT}"]
    r = env.uninstall("--user")
    assert r.returncode == 0, r.stderr
    assert env.calls()[-2:] == [f"--user disable --now {UNIT}", "--user daemon-reload"]


def test_user_unit_default_directory(env: Env) -> None:
    r = env.run("install", "--user", "--no-start", "--systemctl", str(env.systemctl))
    assert r.returncode == 0, r.stderr
    assert (env.tmp / "xdg-config" / "systemd" / "user" / UNIT).is_file()


def test_paths_with_spaces_are_quoted(env: Env) -> None:
    config = env.tmp / "my configs" / "50% $HOME.toml"
    config.parent.mkdir()
    config.write_text(env.config.read_text())
    state = env.tmp / "state dir"
    r = env.install("--config", str(config), "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    text = env.unit.read_text()
    assert f'"{env.tmp}/my configs/50%% $$HOME.toml"' in text
    assert exec_start(text)[1:] == ["agent", "--config", str(config), "--state-dir", str(state)]


@given(st.lists(st.text(st.characters(min_codepoint=0x20, exclude_characters="\x7f")),
                max_size=4))
def test_quoting_round_trips(args: list[str]) -> None:
    argv = ["/opt/swarm $x/bin/swarm-maint", *args]
    line = " ".join(quote_arg(a, executable=(k == 0)) for k, a in enumerate(argv))
    assert split_exec_start(line) == argv


# --- the real systemd-analyze ---------------------------------------------------------------


def _verify(unit: Path, user: bool, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if user:  # the user manager needs a runtime directory (none exists without a login)
        runtime = tmp / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    return subprocess.run(["systemd-analyze", *(["--user"] if user else []), "verify",
                           str(unit)], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("user", [False, True])
def test_systemd_analyze_verifies_the_unit(env: Env, user: bool) -> None:
    # an executable in a directory with a space, a % and a $: quoted and escaped correctly
    bindir = env.tmp / "venv 100% $HOME" / "bin"
    bindir.mkdir(parents=True)
    exe = bindir / "swarm-maint"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = env.tmp / "verify" / UNIT
    unit.parent.mkdir()
    unit.write_text(render_unit(exe, env.config, env.tmp / "state dir", user))
    r = _verify(unit, user, env.tmp)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""

    # and it does check: a missing executable is an error
    exe.unlink()
    r = _verify(unit, user, env.tmp)
    assert r.returncode != 0
    assert "swarm-maint" in r.stderr


# --- the agent as the unit runs it ----------------------------------------------------------


@pytest.mark.slow
def test_agent_started_like_the_unit_stops_cleanly_on_sigterm(env: Env) -> None:
    state = env.tmp / "state"
    r = env.install("--config", str(env.config), "--state-dir", str(state))
    assert r.returncode == 0, r.stderr
    argv = exec_start(env.unit.read_text())
    port = free_port()
    proc_env = {**os.environ, "XDG_STATE_HOME": str(env.tmp / "xdg")}
    proc_env.pop("SWARM_MAINT_CONFIG", None)
    proc = subprocess.Popen([*argv, "--listen", f"127.0.0.1:{port}"], env=proc_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd="/")  # systemd's default WorkingDirectory
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        assert httpx.get(f"{url}/api/v1/status").json()["node"] == "gpu-node-17"
        assert (state / "api-token").is_file()
        assert (state / "state.db").is_file()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # KillSignal=SIGTERM
        rc = proc.wait(timeout=30)  # TimeoutStopSec=30s
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert rc == 0, err  # Restart=on-failure would not restart a clean stop
    assert elapsed < 5, f"took {elapsed:.1f}s to stop"
    assert "Traceback" not in err
