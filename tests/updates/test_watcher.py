"""The agent's side: security patches applied as they appear (non-disruptive ones only),
pending updates exported as metrics, a failed run exported for UpdateFailed, a run cut off
by a reboot finished by itself; and once for real in an agent process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from swarm_maint.clock import SystemClock
from swarm_maint.store import Store
from swarm_maint.updates.watcher import SecurityWatcher
from tests.agent_proc import start_agent
from tests.updates.nodeenv import NodeEnv, make_node, publish_standard

pytestmark = pytest.mark.slow

BASE = {"tool": "1.0", "libfoo": "1.0", "sshish": "1.0", "containerd-test": "1.0"}


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return publish_standard(tmp_path_factory.mktemp("repos"))


def samples(watcher: SecurityWatcher) -> dict[str, float]:
    out = {}
    for fam in watcher.metrics():
        for s in fam.samples:
            key = s.name + (json.dumps(s.labels, sort_keys=True) if s.labels else "")
            out[key] = s.value
    return out


def watch(env: NodeEnv) -> tuple[SecurityWatcher, Store]:
    store = Store(env.state / "state.db")
    return SecurityWatcher(env.config(), store, SystemClock(),
                           config_file=env.config_path), store


def test_non_disruptive_security_patches_go_at_once_disruptive_ones_wait(
        tmp_path: Path, repos: tuple[str, str]) -> None:
    env = make_node(tmp_path, repos, install=BASE)
    watcher, store = watch(env)
    try:
        assert samples(watcher) == {"swarm_update_run_in_progress": 0.0}  # nothing checked
        pending = {i.name: i for i in watcher.check_once()}
        m = samples(watcher)
    finally:
        store.close()
    got = env.installed()
    assert got["libfoo"] == "1.0+sec1" and got["sshish"] == "1.0+sec1"
    assert got["containerd-test"] == "1.0" and got["tool"] == "1.0"
    assert env.commands() == ["restart sshish.service"]  # no drain, no reboot
    assert set(pending) == {"containerd-test", "tool"}
    assert pending["containerd-test"].skip_reason == \
        "disruptive (service-restart): waits for a maintenance window"
    assert m['swarm_update_pending{"env": "apt", "held": "false", "security": "true"}'] == 1
    assert m['swarm_update_pending{"env": "apt", "held": "false", "security": "false"}'] == 1
    assert 0 <= m["swarm_update_security_pending_age_seconds"] < 60
    assert m["swarm_update_last_run_success"] == 1
    runs = json.loads(env.cli("update", "history", "--json").stdout)
    assert [(r["trigger"], r["mode"], r["status"]) for r in runs] == \
        [("agent", "security", "succeeded")]


def test_a_failed_security_run_is_rolled_back_and_exported(tmp_path: Path,
                                                           repos: tuple[str, str]) -> None:
    env = make_node(tmp_path, repos, install={"secbroken": "1.0", "libfoo": "1.0"})
    watcher, store = watch(env)
    try:
        watcher.check_once()
        m = samples(watcher)
    finally:
        store.close()
    assert env.installed() == {"secbroken": "1.0", "libfoo": "1.0"}  # both rolled back
    assert m["swarm_update_last_run_success"] == 0  # UpdateFailed fires on this
    assert m['swarm_update_pending{"env": "apt", "held": "false", "security": "true"}'] == 2


def test_a_run_waiting_for_a_reboot_is_finished_after_boot(tmp_path: Path,
                                                           repos: tuple[str, str]) -> None:
    env = make_node(tmp_path, repos, install={"rebooter": "1.0"})
    assert env.cli("update", "apply", "--yes").returncode == 0
    assert json.loads(env.cli("update", "history", "--json").stdout)[0]["status"] == \
        "awaiting-reboot"
    (tmp_path / "boot_id").write_text("boot-2\n")
    watcher, store = watch(env)
    try:
        assert samples(watcher)["swarm_update_run_in_progress"] == 1
        watcher.check_once()
        m = samples(watcher)
    finally:
        store.close()
    assert json.loads(env.cli("update", "history", "--json").stdout)[0]["status"] == \
        "succeeded"
    assert m["swarm_update_run_in_progress"] == 0 and m["swarm_update_last_run_success"] == 1
    assert [c.split()[0] for c in env.commands()] == ["drain", "reboot", "undrain"]


def test_agent_applies_security_patches_and_exports_them(tmp_path: Path,
                                                         repos: tuple[str, str]) -> None:
    # only the security-updates job, caught up 1 s after start (a first start counts as a
    # missed slot), then hourly
    only = {name: {"enabled": False} for name in (
        "health", "diagnostics", "config-snapshot", "system-updates")}
    env = make_node(tmp_path, repos, install=BASE, extra={
        "schedule": {"start_delay": "1s", "jitter": "0s", "jobs": only},
        "backup": {"config_snapshots": {"paths": ["/etc"]}, "jobs": []}})
    agent = start_agent(tmp_path, "--config", str(env.config_path))
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            text = httpx.get(f"{agent.url}/metrics", timeout=5).text
            if "swarm_update_last_run_success" in text:
                break
            time.sleep(0.5)
        line = next((ln for ln in text.splitlines()
                     if ln.startswith("swarm_update_last_run_success")), "")
        assert line.endswith(" 1.0"), text[-2000:]
        assert 'swarm_update_pending{env="apt",held="false",security="true"' in text
        api = httpx.get(f"{agent.url}/api/v1/updates", timeout=5).json()
        assert api["enabled"] and api["last_check"] > 0
        assert {i["name"] for i in api["pending"]} == {"containerd-test", "tool"}
        assert api["runs"][0]["trigger"] == "agent" and api["runs"][0]["status"] == "succeeded"
        jobs = httpx.get(f"{agent.url}/api/v1/jobs/history?job=security-updates",
                         timeout=5).json()["runs"]
        assert jobs[0]["status"] == "succeeded" and jobs[0]["trigger"] == "catch-up"
        assert jobs[0]["summary"].startswith("2 security update(s) applied")
        assert httpx.get(f"{agent.url}/api/v1/updates?limit=0", timeout=5).status_code == 400
    finally:
        agent.proc.terminate()
        _, err = agent.proc.communicate(timeout=10)
    assert "applying 2 security update(s): libfoo 1.0+sec1, sshish 1.0+sec1" in err
    assert env.installed()["libfoo"] == "1.0+sec1"
