"""The update runbook against real packages on an alternate root: plan verdicts, security
only, holds, minimum age, rollback of a failing postinst and of a failed health gate,
reboot detection and resume, a crash between steps resumed, interrupted dpkg repaired."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from swarm_maint.updates.errors import PackageError, UpdateError
from swarm_maint.updates.history import UpdateHistory
from tests.fake_clock import FakeClock
from tests.fake_nvml import FakeNvmlState, build_fake_nvml
from tests.updates.nodeenv import NodeEnv, make_node, publish_standard, recorder

pytestmark = pytest.mark.slow

BASE = {"tool": "1.0", "libfoo": "1.0", "nvidia-driver-test": "1.0", "rebooter": "1.0",
        "raylet-svc": "1.0", "sshish": "1.0", "test-microcode": "1.0",
        "containerd-test": "1.0"}


def only(env: NodeEnv, *names: str) -> None:
    """Hold every package but ``names``, so a routine run moves just those."""
    env.reconfigure(holds=sorted((set(BASE) | {"broken", "flaky"}) - set(names)))


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return publish_standard(tmp_path_factory.mktemp("repos"))


def node(tmp_path: Path, repos: tuple[str, str], install: dict[str, str] | None = None,
         **updates: Any) -> NodeEnv:
    return make_node(tmp_path, repos, install=install or BASE, updates=updates)


def by_name(items: list[Any]) -> dict[str, Any]:
    return {i["name"] if isinstance(i, dict) else i.name: i for i in items}


def test_plan_json_says_security_held_disruptive_and_why(tmp_path: Path,
                                                         repos: tuple[str, str]) -> None:
    env = node(tmp_path, repos)
    proc = env.cli("update", "plan", "--json", "--root", str(env.root))
    assert proc.returncode == 0, proc.stderr
    plan = by_name(json.loads(proc.stdout))
    for item in plan.values():
        assert {"name", "current", "candidate", "origin", "security", "held", "disruptive",
                "skip_reason"} <= set(item)
    assert set(plan) == set(BASE)
    assert plan["tool"]["skip_reason"] is None
    assert (plan["tool"]["current"], plan["tool"]["candidate"]) == ("1.0", "1.1")
    assert plan["tool"]["origin"] == "Swarm Test/stable" and not plan["tool"]["security"]
    lib = plan["libfoo"]
    assert lib["security"] and lib["candidate"] == "1.0+sec1"
    assert lib["origin"] == "Swarm Test/stable-security"
    drv = plan["nvidia-driver-test"]
    assert drv["held"] and drv["disruptive"] and drv["disruption"] == "driver-reload"
    assert drv["skip_reason"].startswith("held")
    assert plan["test-microcode"]["disruption"] == "reboot"
    # rebooter asks for a reboot only once installed (/run/reboot-required): not predicted
    assert not plan["rebooter"]["disruptive"]
    # a package shipping a unit of a critical service is disruptive; another unit is not
    assert plan["raylet-svc"]["disruption"] == "service-restart"
    assert plan["raylet-svc"]["services"] == ["ray-head.service"]
    assert not plan["sshish"]["disruptive"] and plan["sshish"]["services"] == ["sshish.service"]
    assert plan["sshish"]["security"]

    sec = by_name(json.loads(env.cli("update", "plan", "--json", "--security-only",
                                     "--root", str(env.root)).stdout))
    assert sec["libfoo"]["skip_reason"] is None
    assert sec["tool"]["skip_reason"] == "not a security update"

    human = env.cli("update", "plan", "--root", str(env.root))
    assert human.returncode == 0 and "libfoo" in human.stdout and "would be installed" in \
        human.stdout


def test_security_only_apply_touches_only_security_updates(tmp_path: Path,
                                                           repos: tuple[str, str]) -> None:
    env = node(tmp_path, repos)
    proc = env.cli("update", "apply", "--security-only", "--yes", "--root", str(env.root))
    assert proc.returncode == 0, proc.stderr
    got = env.installed()
    assert got["libfoo"] == "1.0+sec1"
    assert got["sshish"] == "1.0+sec1"          # non-disruptive: a plain service restart
    assert got["containerd-test"] == "1.0+sec1"  # disruptive, so the node was drained
    assert got["tool"] == "1.0" and got["nvidia-driver-test"] == "1.0"
    assert got["raylet-svc"] == "1.0"
    assert env.commands()[1:] == ["restart containerd.service sshish.service", "undrain"]
    assert env.commands()[0].startswith("drain")
    hist = json.loads(env.cli("update", "history", "--json").stdout)
    assert len(hist) == 1 and hist[0]["status"] == "succeeded" and hist[0]["mode"] == "security"
    steps = {s["step"]: s for s in hist[0]["steps"]}
    assert list(steps) == ["repair", "record", "snapshot", "drain", "apply", "restart", "gate",
                           "undrain"]
    assert steps["restart"]["detail"] == "restarted containerd.service, sshish.service"
    # the pre-update config snapshot holds the root's /etc
    snaps = json.loads(env.cli("config-snapshot", "list", "--json").stdout)
    assert any("reason:pre-update" in s["tags"] for s in snaps)
    human = env.cli("update", "history").stdout
    assert "run 1" in human and "succeeded" in human and "libfoo 1.0→1.0+sec1" in human


def test_apply_waits_for_no_one_while_a_job_holds_the_maintenance_lease(
        tmp_path: Path, repos: tuple[str, str]) -> None:
    from swarm_maint.clock import SystemClock
    from swarm_maint.schedule.lease import Lease
    from swarm_maint.store import Store

    env = node(tmp_path, repos)
    before = env.installed()
    store = Store(env.state / "state.db")
    try:
        lease = Lease(store, SystemClock())
        assert lease.try_acquire("backup:data") is not None  # a backup runs on this node
        busy = env.cli("update", "apply", "--security-only", "--yes")
        lease.release("backup:data")
    finally:
        store.close()
    assert busy.returncode == 31, busy.stderr
    assert "maintenance lease is held by backup:data (pid" in busy.stderr
    assert env.installed() == before and env.commands() == []
    assert json.loads(env.cli("update", "history", "--json").stdout) == []
    ok = env.cli("update", "apply", "--security-only", "--yes")
    assert ok.returncode == 0, ok.stderr


MODULE = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  {v}  Tue Mar  5 22:23:56 UTC 2024\n"
          "GCC version:  gcc version 12.3.0\n")


@pytest.mark.parametrize("reload_works", [True, False])
def test_held_driver_moves_only_in_a_driver_update_checked_against_nvml(
        tmp_path: Path, repos: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        reload_works: bool) -> None:
    nvml = FakeNvmlState(tmp_path / "nvml.state")
    nvml.write([{"name": "NVIDIA H100 80GB HBM3", "util_gpu": 0, "temp": 40}],
               driver_version="535.104.05")
    monkeypatch.setenv("FAKE_NVML_STATE", str(nvml.path))
    proc_root = tmp_path / "proc"
    (proc_root / "driver/nvidia").mkdir(parents=True)
    module = proc_root / "driver/nvidia/version"
    module.write_text(MODULE.format(v="535.104.05"))
    env = node(tmp_path, repos)
    # the reload loads the module of the installed package (or, broken, loads nothing)
    installed = env.root / "usr/share/nvidia-driver-test/version"
    for v in ("535.104.05", "550.54.15"):
        (tmp_path / f"module-{v}").write_text(MODULE.format(v=v))
    load = (f"if grep -q 1.1 {installed}; then v=550.54.15; else v=535.104.05; fi\n"
            f'cp "{tmp_path}/module-$v" {module}') if reload_works else ""
    env.settings["monitoring"] = {"collectors": ["gpu"], "proc_root": str(proc_root),
                                  "nvml_library": str(build_fake_nvml())}
    env.settings["health"]["families"] = ["gpu"]
    env.reconfigure(driver_reload_command=recorder(tmp_path, "reload", load), holds=["nvidia-*"])
    svc, store = env.service()
    try:
        routine = by_name(svc.plan("routine"))
        assert routine["nvidia-driver-test"].skip_reason is not None
        assert svc.apply([routine["tool"]], "routine").status == "succeeded"
        assert env.installed()["nvidia-driver-test"] == "1.0"  # routine runs never move it
        driver = by_name(svc.plan("driver"))
        assert driver["nvidia-driver-test"].selected and driver["nvidia-driver-test"].held
        assert driver["libfoo"].skip_reason == \
            "not a held package (a driver update moves only those)"
        run = svc.apply(list(driver.values()), "driver")
    finally:
        store.close()
    if reload_works:
        assert run.status == "succeeded", run.error
        assert env.installed()["nvidia-driver-test"] == "1.1"
        assert "550.54.15" in module.read_text()
        assert [c.split()[0] for c in env.commands()] == ["drain", "reload", "undrain"]
    else:
        assert run.status == "failed"
        assert run.error is not None and "driver/library version mismatch" in run.error
        assert env.installed()["nvidia-driver-test"] == "1.0"  # rolled back
        assert "driver_version=535.104.05" in nvml.path.read_text()
        assert [c.split()[0] for c in env.commands()] == ["drain", "reload"]


def test_minimum_age_waits_and_security_skips_it(tmp_path: Path,
                                                 repos: tuple[str, str]) -> None:
    env = node(tmp_path, repos, min_age="1d")
    clock = FakeClock()
    svc, store = env.service(clock=clock)
    try:
        items = by_name(svc.plan("routine"))
        assert items["tool"].skip_reason == "too new: seen for 0s, minimum age 1d"
        assert items["libfoo"].selected  # security: security_min_age is 0
        clock.advance(23 * 3600)
        items = by_name(svc.plan("routine", refresh=False))
        assert not items["tool"].selected and "seen for 23h" in (items["tool"].skip_reason or "")
    finally:
        store.close()
    clock.advance(3600)
    svc, store = env.service(clock=clock)  # first sightings survive a restart
    try:
        assert by_name(svc.plan("routine", refresh=False))["tool"].selected
    finally:
        store.close()


def test_failing_postinst_is_rolled_back_config_restored_node_kept_drained(
        tmp_path: Path, repos: tuple[str, str]) -> None:
    env = node(tmp_path, repos, install={**BASE, "broken": "1.0", "raylet-svc": "1.0"})
    only(env, "broken", "raylet-svc")
    proc = env.cli("update", "apply", "--yes", "--root", str(env.root))
    assert proc.returncode == 20, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("swarm-maint: error: update run 1 failed: apply failed"), last
    assert "post-installation script subprocess returned error exit status 3" in last
    assert "[FAILED] apply:" in proc.stderr and "[    ok] rollback:" in proc.stderr
    got = env.installed()
    assert got["broken"] == "1.0" and got["raylet-svc"] == "1.0"  # both rolled back
    assert env.apt().audit() == ""
    assert (env.root / "etc/app.conf").read_text() == "setting = 1\n"  # snapshot restored
    assert [c.split()[0] for c in env.commands()] == ["drain"]  # kept out of service
    run = json.loads(env.cli("update", "history", "--json").stdout)[0]
    assert run["status"] == "failed"
    steps = [(s["step"], s["status"]) for s in run["steps"]]
    assert steps[-4:] == [("apply", "failed"), ("rollback", "done"), ("restore", "done"),
                          ("out-of-service", "done")]
    assert "broken → 1.0" in run["steps"][-3]["detail"]
    _svc, store = env.service()
    try:
        windows = store.query("SELECT ended FROM maintenance_windows")
        assert len(windows) == 1 and windows[0][0] is not None  # alerts flow again
    finally:
        store.close()


def test_failed_health_gate_rolls_back(tmp_path: Path, repos: tuple[str, str]) -> None:
    env = node(tmp_path, repos)
    # tool 1.1 "breaks" the node: the custom check app-conf fails after it
    env.settings["health"]["custom"].append(
        {"name": "tool-works", "command": [
            "sh", "-c", f"grep -q 1.1 {env.root}/usr/share/tool/version && exit 2; exit 0"]})
    only(env, "tool")
    svc, store = env.service()
    try:
        with pytest.raises(UpdateError, match="nothing selected"):
            svc.apply([], "routine")
        run = svc.apply(svc.plan("routine"), "routine")
    finally:
        store.close()
    assert run.status == "failed"
    assert run.error is not None and run.error.startswith("gate failed: health gate: tool-works")
    assert env.installed()["tool"] == "1.0"


def test_reboot_is_detected_taken_and_resumed_after_boot(tmp_path: Path,
                                                         repos: tuple[str, str]) -> None:
    env = node(tmp_path, repos)
    only(env, "rebooter")
    proc = env.cli("update", "apply", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "rebooting; it continues after boot" in proc.stdout
    assert [c.split()[0] for c in env.commands()] == ["drain", "reboot"]
    # resumed before the reboot happened (same boot id): it reboots again
    assert env.cli("update", "resume").returncode == 0
    assert [c.split()[0] for c in env.commands()] == ["drain", "reboot", "reboot"]
    (tmp_path / "boot_id").write_text("boot-2\n")
    proc = env.cli("update", "resume")
    assert proc.returncode == 0, proc.stderr
    assert "succeeded" in proc.stdout
    assert [c.split()[0] for c in env.commands()] == ["drain", "reboot", "reboot", "undrain"]
    run = json.loads(env.cli("update", "history", "--json").stdout)[0]
    restart = [s for s in run["steps"] if s["step"] == "restart"]
    assert [s["status"] for s in restart] == ["waiting", "waiting", "done"]
    assert restart[-1]["detail"].startswith("rebooted")


def test_a_reboot_left_by_a_security_patch_is_taken_by_the_weekly_job(
        tmp_path: Path, repos: tuple[str, str]) -> None:
    import threading

    from swarm_maint.clock import SystemClock
    from swarm_maint.schedule.builtin import JobContext, build_jobs
    from swarm_maint.schedule.job import JobRun

    env = node(tmp_path, repos)
    only(env, "rebooter")
    svc, store = env.service()
    try:
        # the agent's immediate patches may not reboot: the request is left pending
        patch = svc.apply(svc.plan("routine"), "routine", trigger="agent", may_reboot=False)
        assert patch.status == "succeeded" and env.commands() == []
        assert "left for the next maintenance window" in next(
            s.detail for s in patch.steps if s.step == "restart")
        assert svc.pending_reboot() == ["rebooter"]
        jobs = {j.name: j for j in build_jobs(JobContext(env.config(), store, SystemClock(),
                                                         config_file=env.config_path))}
        weekly = jobs["system-updates"]

        def run() -> str:
            out = weekly.action(JobRun("system-updates", "schedule", 1, threading.Event()))
            assert out.status == "succeeded", out.summary
            return out.summary

        assert "reboot asked for by rebooter" in run()
        assert [c.split()[0] for c in env.commands()] == ["drain", "reboot"]
        assert svc.history.runs(1)[0].status == "awaiting-reboot"
        # the node comes back: a new boot id, /run emptied
        (tmp_path / "boot_id").write_text("boot-2\n")
        for f in ("reboot-required", "reboot-required.pkgs"):
            (env.root / "run" / f).unlink()
        assert run().startswith("nothing to update")  # it resumed the run first
        last = svc.history.runs(1)[0]
    finally:
        store.close()
    assert last.status == "succeeded" and last.items == []
    assert [c.split()[0] for c in env.commands()] == ["drain", "reboot", "undrain"]
    steps = {s.step: (s.status, s.detail) for s in last.steps}
    assert steps["apply"][0] == "skipped" and steps["restart"][1].startswith("rebooted")


def test_reboot_never_leaves_it_to_a_person(tmp_path: Path, repos: tuple[str, str]) -> None:
    env = node(tmp_path, repos, reboot="never")
    only(env, "rebooter")
    assert env.cli("update", "apply", "--yes").returncode == 0
    run = json.loads(env.cli("update", "history", "--json").stdout)[0]
    assert run["status"] == "succeeded"
    assert "not rebooting (updates.reboot = never)" in \
        next(s["detail"] for s in run["steps"] if s["step"] == "restart")


@pytest.mark.parametrize("where", ["drain", "gate"])
def test_crash_between_steps_is_resumed(tmp_path: Path, repos: tuple[str, str],
                                        where: str) -> None:
    env = node(tmp_path, repos)
    only(env, "tool", "raylet-svc")
    once = f'if [ ! -e "{tmp_path}/crashed" ]; then touch "{tmp_path}/crashed"; kill -9 $PPID; fi'
    if where == "drain":
        env.reconfigure(drain_command=recorder(tmp_path, "drain", once))
    else:
        env.settings["health"]["custom"].append({"name": "crasher", "command": [
            "sh", "-c", f'grep -q 1.1 {env.root}/usr/share/tool/version || exit 0\n{once}']})
        env.reconfigure()
    proc = env.cli("update", "apply", "--yes")
    assert proc.returncode == -9, proc.stderr  # the runbook process was killed
    run = json.loads(env.cli("update", "history", "--json").stdout)[0]
    assert run["status"] == "running"
    assert (run["steps"][-1]["step"], run["steps"][-1]["status"]) == (where, "running")
    refused = env.cli("update", "apply", "--yes")
    assert refused.returncode == 20 and "update resume" in refused.stderr
    proc = env.cli("update", "resume")
    assert proc.returncode == 0, proc.stderr
    got = env.installed()
    assert got["tool"] == "1.1" and got["raylet-svc"] == "1.1"
    run = json.loads(env.cli("update", "history", "--json").stdout)[0]
    assert run["status"] == "succeeded"
    assert [s["step"] for s in run["steps"] if s["status"] == "done"][-1] == "undrain"
    assert [c.split()[0] for c in env.commands()][-1] == "undrain"


def test_interrupted_dpkg_is_repaired_before_anything_else(tmp_path: Path,
                                                           repos: tuple[str, str]) -> None:
    env = node(tmp_path, repos, install={"flaky": "1.0", "tool": "1.0"})
    with pytest.raises(PackageError, match="exit 100"):  # flaky's first configure fails
        env.apt().install({"flaky": "1.1"})
    assert "flaky" in env.apt().audit()
    svc, store = env.service()
    try:
        run = svc.apply(svc.plan("routine"), "routine")
        hist = UpdateHistory(store).runs()
    finally:
        store.close()
    assert run.status == "succeeded", run.error
    assert hist[0].steps[0].step == "repair" and hist[0].steps[0].status == "done"
    assert "repaired an interrupted run" in hist[0].steps[0].detail
    assert env.apt().audit() == "" and env.installed()["tool"] == "1.1"


def test_bad_input_is_one_line(tmp_path: Path, repos: tuple[str, str]) -> None:
    env = node(tmp_path, repos, install={"tool": "1.0"})
    both = env.cli("update", "plan", "--security-only", "--driver")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    missing = env.cli("update", "plan", "--root", str(tmp_path / "nope"))
    assert missing.returncode == 2
    no_yes = env.cli("update", "apply")
    assert no_yes.returncode == 2 and "--yes" in no_yes.stderr
    assert env.cli("update", "resume").stdout.strip() == "no update run to resume"
    assert env.installed() == {"tool": "1.0"}


def test_an_image_root_is_updated_without_touching_this_host(tmp_path: Path,
                                                             repos: tuple[str, str]) -> None:
    """root_is_live off (an image, a chroot): packages move, but nothing of this host is
    drained, rebooted, restarted or health-gated."""
    env = node(tmp_path, repos, root_is_live=False)
    only(env, "rebooter", "raylet-svc")
    proc = env.cli("update", "apply", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert env.installed()["rebooter"] == "1.1" and env.installed()["raylet-svc"] == "1.1"
    assert env.commands() == []
    run = json.loads(env.cli("update", "history", "--json").stdout)[0]
    steps = {s["step"]: (s["status"], s["detail"]) for s in run["steps"]}
    assert run["status"] == "succeeded"
    assert steps["drain"] == ("skipped", "alternate root: no running workload to drain")
    assert steps["restart"] == ("done", "reboot needed by rebooter inside the alternate root; "
                                        "this host is not rebooted")
    assert steps["gate"][0] == "skipped"
