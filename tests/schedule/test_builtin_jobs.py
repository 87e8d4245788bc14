"""The built-in jobs against real repositories, snapshots and health checks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from swarm_maint.backup.config_snapshots import list_config_snapshots, open_config_repo
from swarm_maint.backup.repository import Repository
from swarm_maint.backup.snapshots import list_snapshots
from swarm_maint.backup.storage import open_storage
from swarm_maint.clock import SystemClock
from swarm_maint.config import Config, config_from_dict
from swarm_maint.errors import ConfigError
from swarm_maint.schedule.backup_jobs import open_job_repo
from swarm_maint.schedule.builtin import JobContext, build_jobs, one_shot_health
from swarm_maint.schedule.scheduler import Scheduler
from swarm_maint.schedule.service import build_scheduler
from swarm_maint.store import Store
from tests.schedule.conftest import node_settings


def scheduler(cfg: Config) -> tuple[Scheduler, Store]:
    store = Store(cfg.agent.resolved_state_dir() / "state.db")
    clock = SystemClock()
    ctx = JobContext(cfg, store, clock,
                     health=lambda: one_shot_health(cfg, store, clock))
    return build_scheduler(ctx), store


def test_the_default_schedule_has_every_swarm_job() -> None:
    cfg = Config()
    store_less = JobContext(cfg, None, SystemClock(), health=lambda: None)  # type: ignore[arg-type]
    jobs = {j.name: j for j in build_jobs(store_less)}
    assert set(jobs) == {"health", "diagnostics", "config-snapshot", "backup:data",
                         "backup-verify", "backup-retention", "security-updates",
                         "system-updates"}
    assert jobs["health"].schedule.period == 3600 and not jobs["health"].lease
    assert jobs["backup:data"].schedule.period == 86400
    assert jobs["backup:data"].max_age == 86400 + 6 * 3600
    assert jobs["system-updates"].schedule.period == 7 * 86400
    assert jobs["system-updates"].window and jobs["diagnostics"].window
    assert not jobs["security-updates"].window and jobs["security-updates"].lease
    assert all(j.jitter == 300 for j in jobs.values())
    # the lease goes to security patches first, then health, snapshots, backups
    assert (jobs["security-updates"].priority < jobs["diagnostics"].priority
            < jobs["config-snapshot"].priority < jobs["backup:data"].priority
            < jobs["backup-verify"].priority)


def test_overrides_change_and_disable_jobs_and_unknown_names_are_refused() -> None:
    cfg = config_from_dict({"schedule": {"jobs": {
        "health": {"schedule": "*/10 * * * *", "retries": 0},
        "system-updates": {"enabled": False}, "backup:data": {"jitter": "1m"}}}})
    jobs = {j.name: j for j in build_jobs(JobContext(cfg, None, SystemClock(),  # type: ignore[arg-type]
                                                     health=lambda: None))}  # type: ignore[arg-type,return-value]
    assert jobs["health"].schedule.period == 600 and jobs["health"].retries == 0
    assert not jobs["system-updates"].enabled and jobs["backup:data"].jitter == 60
    with pytest.raises(ConfigError, match=r"schedule\.jobs\.backup:nope: no such job; the "
                       r"jobs are health, diagnostics, .*, backup:data"):
        config_from_dict({"schedule": {"jobs": {"backup:nope": {"enabled": False}}}})
    # a job of a disabled feature may still be named: the override has nothing to act on
    off = config_from_dict({"updates": {"enabled": False},
                            "schedule": {"jobs": {"security-updates": {"enabled": False}}}})
    names = {j.name for j in build_jobs(JobContext(off, None, SystemClock(),  # type: ignore[arg-type]
                                                   health=lambda: None))}  # type: ignore[arg-type,return-value]
    assert "security-updates" not in names


def test_the_builtin_job_names_are_the_ones_the_config_knows() -> None:
    from swarm_maint.config.schedule import BUILTIN_JOBS
    from swarm_maint.schedule.builtin import DEFAULT_SCHEDULES

    assert set(BUILTIN_JOBS) == set(DEFAULT_SCHEDULES)


@pytest.mark.parametrize(("settings", "message"), [
    ({"backup": {"jobs": [{"name": "x", "paths": ["/d"], "schedule": "0 25 * * *"}]}},
     "key backup.jobs[0].schedule: invalid cron expression '0 25 * * *'"),
    ({"backup": {"jobs": [{"name": "x", "paths": ["/d"], "repo": "/r"}]}},
     "backup job x: repo needs password_file"),
    ({"backup": {"jobs": [{"name": "../x", "paths": ["/d"]}]}}, "key backup.jobs[0].name"),
    ({"backup": {"jobs": [{"name": "x", "paths": ["/d"]}, {"name": "x", "paths": ["/e"]}]}},
     "backup job name used twice: x"),
    ({"backup": {"jobs": [{"name": "x", "paths": []}]}}, "key backup.jobs[0].paths"),
    ({"schedule": {"windows": [{"start": "0 1 * * *", "duration": "0s"}]}},
     "longer than 0s"),
    ({"schedule": {"timezone": "Mars/Olympus"}}, "unknown time zone 'Mars/Olympus'"),
    ({"schedule": {"jobs": {"health": {"schedule": "every hour"}}}},
     "key schedule.jobs.health.schedule: invalid cron expression"),
])
def test_bad_schedule_config_is_one_clear_error(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(settings, "node.toml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_backup_job_into_the_default_repository_is_incremental(tmp_path: Path,
                                                                node: Any) -> None:
    _, cfg = node
    sched, store = scheduler(cfg)
    try:
        first = sched.run_now("backup:data")
        assert first.status == "succeeded", first.summary
        assert first.details["files"] == 2 and first.details["added_bytes"] > 0
        second = sched.run_now("backup:data")
        assert second.status == "succeeded"
        assert second.details["added_bytes"] < 10_000  # only the new snapshot's tree
    finally:
        store.close()
    repo = open_job_repo(cfg, cfg.backup.jobs[0])
    assert Path(repo.storage.location()) == tmp_path / "state" / "backups" / "data"
    snaps = list_snapshots(repo)
    assert len(snaps) == 2
    assert all({"job:data", "scheduled"} <= set(obj["tags"]) for _, obj in snaps)
    pw = (tmp_path / "state" / "backups" / "data.pass")
    assert pw.stat().st_mode & 0o777 == 0o600
    # both runs finished; the first looked for packs a crash left (see orphan_check.py)
    record = json.loads((tmp_path / "state" / "cache" / repo.id[:32] / "orphan-check.json")
                        .read_text())
    assert record["unfinished"] is False and record["checked"] <= time.time()


def test_backup_job_failures_are_clear(tmp_path: Path) -> None:
    settings = node_settings(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    settings["backup"]["jobs"] = [
        {"name": "gone", "paths": [str(tmp_path / "nothing-here")]},
        {"name": "norepo", "paths": [str(tmp_path / "data")], "repo": str(tmp_path / "r"),
         "password_file": str(pw)},
        {"name": "half", "paths": [str(tmp_path / "data"), str(tmp_path / "missing")]},
    ]
    sched, store = scheduler(config_from_dict(settings))
    try:
        gone = sched.run_now("backup:gone")
        norepo = sched.run_now("backup:norepo")
        half = sched.run_now("backup:half")
    finally:
        store.close()
    assert gone.status == "failed" and "nothing to back up" in gone.summary
    assert norepo.status == "failed"
    assert f"no repository at {tmp_path / 'r'}" in norepo.summary
    assert "swarm-maint backup init" in norepo.summary
    assert not (tmp_path / "r").exists()  # a configured repository is never created
    assert half.status == "failed" and "missing:" in half.summary
    assert half.details["snapshot"]  # what exists is still backed up


def test_retention_forgets_by_each_jobs_policy_in_a_shared_repository(tmp_path: Path) -> None:
    settings = node_settings(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    shared = tmp_path / "shared-repo"
    Repository.init(open_storage(str(shared)), "secret")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.txt").write_text("x")
    settings["backup"]["jobs"] = [
        {"name": "models", "paths": [str(tmp_path / "data")], "repo": str(shared),
         "password_file": str(pw), "keep_last": 1, "keep_daily": 0, "keep_weekly": 0,
         "keep_monthly": 0},
        {"name": "results", "paths": [str(tmp_path / "results")], "repo": str(shared),
         "password_file": str(pw)},
    ]
    sched, store = scheduler(config_from_dict(settings))
    try:
        for _ in range(3):
            assert sched.run_now("backup:models").status == "succeeded"
        assert sched.run_now("backup:results").status == "succeeded"
        assert sched.run_now("backup:results").status == "succeeded"
        ret = sched.run_now("backup-retention")
        ver = sched.run_now("backup-verify")
    finally:
        store.close()
    assert ret.status == "succeeded", ret.summary
    # models keeps its last one; results keeps the last of today (keep_daily): the
    # policies apply to each job's own snapshots only
    assert ret.details["models"]["removed"] == 2 and ret.details["results"]["removed"] == 1
    assert "prune" in ret.details["models"]
    tags = [obj["tags"] for _, obj in list_snapshots(Repository.open(open_storage(str(shared)),
                                                                     "secret"))]
    assert sum("job:models" in t for t in tags) == 1
    assert sum("job:results" in t for t in tags) == 1
    assert ver.status == "succeeded", ver.summary
    assert set(ver.details) == {"backup:models", "config-snapshots"}  # the shared repo once


def test_verify_job_names_a_damaged_repository(tmp_path: Path, node: Any) -> None:
    _, cfg = node
    sched, store = scheduler(cfg)
    try:
        assert sched.run_now("backup:data").status == "succeeded"
        packs = sorted((tmp_path / "state" / "backups" / "data" / "packs").rglob("*"))
        pack = next(p for p in packs if p.is_file())
        raw = bytearray(pack.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        pack.write_bytes(bytes(raw))
        settings = node_settings(tmp_path)
        settings["backup"]["verify_read_data_subset"] = 100
        sched2, store2 = scheduler(config_from_dict(settings))
        try:
            rec = sched2.run_now("backup-verify")
        finally:
            store2.close()
    finally:
        store.close()
    assert rec.status == "failed"
    assert rec.summary.startswith("damaged: backup:data:")
    assert rec.details["backup:data"]["ok"] is False


@pytest.mark.parametrize("auto_repair", [True, False])
def test_verify_job_repairs_a_lost_pack_and_the_next_backup_heals(tmp_path: Path,
                                                                  auto_repair: bool) -> None:
    import os

    settings = node_settings(tmp_path)
    # random data: several packs, one of which goes missing
    (tmp_path / "data" / "models" / "model.safetensors").write_bytes(os.urandom(20 << 20))
    settings["backup"]["verify_repair"] = auto_repair
    cfg = config_from_dict(settings)
    sched, store = scheduler(cfg)
    try:
        assert sched.run_now("backup:data").status == "succeeded"
        repo_dir = tmp_path / "state" / "backups" / "data"
        lost = max((p for p in (repo_dir / "packs").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
        lost_size = lost.stat().st_size
        lost.unlink()
        ver = sched.run_now("backup-verify")
        again = sched.run_now("backup:data")
        ver2 = sched.run_now("backup-verify")
    finally:
        store.close()
    assert ver.status == "failed" and "is named by the index but missing" in ver.summary
    index_names_lost = any(pack.hex() == lost.name
                           for pack in open_job_repo(cfg, cfg.backup.jobs[0]).index.packs)
    if auto_repair:
        assert "repaired: the index now lists what the packs hold" in ver.summary
        assert ver.details["backup:data"]["repair"]["blobs_lost"] > 0
        assert not index_names_lost
        # the next scheduled backup stores the lost chunks again: all is sound
        assert again.status == "succeeded" and again.details["added_bytes"] > lost_size * 0.9
        assert ver2.status == "succeeded", ver2.summary
    else:
        assert "run `swarm-maint backup repair`" in ver.summary
        assert index_names_lost and "repair" not in ver.details["backup:data"]
        assert again.details["added_bytes"] < 1 << 20  # it trusts the index
        assert ver2.status == "failed"


def test_config_snapshot_and_health_jobs(node: Any) -> None:
    _, cfg = node
    sched, store = scheduler(cfg)
    try:
        snap = sched.run_now("config-snapshot")
        health = sched.run_now("health")
    finally:
        store.close()
    assert snap.status == "succeeded", snap.summary
    [(sid, obj)] = list_config_snapshots(open_config_repo(cfg))
    assert sid == snap.details["snapshot"] and "reason:periodic" in obj["tags"]
    assert health.status == "succeeded"
    assert health.summary.startswith("1 OK")
    # the history keeps the counts, and the results only of checks that need attention
    assert health.details == {"counts": {"OK": 1}, "results": []}


def test_update_jobs_are_skipped_with_a_reason_when_not_root() -> None:
    from swarm_maint.schedule.builtin import not_root

    skip = not_root(Config(), euid=1000)
    assert skip is not None and skip.status == "skipped"
    assert skip.summary.startswith("package updates need root")
    assert not_root(Config(), euid=0) is None
    pip_only = config_from_dict({"updates": {"apt": False}})
    assert not_root(pip_only, euid=1000) is None  # a user's own environments need no root
    image = config_from_dict({"updates": {"root": "/srv/image"}})
    assert not_root(image, euid=1000) is None


def _children() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)
            if "swarm_maint.schedule.child" in " ".join(p.cmdline())]


def test_backups_in_a_child_process_succeed_time_out_and_stop(tmp_path: Path) -> None:
    import os
    import threading
    import time

    from swarm_maint.schedule.child import backup_in_child
    from swarm_maint.schedule.job import JobRun

    settings = node_settings(tmp_path)
    big = tmp_path / "data" / "big.bin"
    with big.open("wb") as f:
        for _ in range(8):
            f.write(os.urandom(64 << 20))
    settings["backup"]["jobs"] = [
        {"name": "data", "paths": [str(tmp_path / "data")]},
        {"name": "slow", "paths": [str(tmp_path / "data")], "timeout": "300ms"}]
    cfg = config_from_dict(settings)
    data, slow = cfg.backup.jobs

    def run(stop: threading.Event | None = None) -> JobRun:
        return JobRun("backup:x", "schedule", 1, stop or threading.Event())

    ok = backup_in_child(cfg, data, run())
    assert ok.status == "succeeded", ok.summary
    assert ok.details["files"] == 3 and ok.details["bytes"] > 500 << 20
    assert list_snapshots(open_job_repo(cfg, data))  # written by the child, readable here

    started = time.monotonic()
    timed_out = backup_in_child(cfg, slow, run())
    assert timed_out.status == "failed"
    assert timed_out.summary.startswith("timed out after 300ms and was killed")
    assert time.monotonic() - started < 15 and _children() == []

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    (tmp_path / "data" / "big2.bin").write_bytes(os.urandom(256 << 20))
    stopped = backup_in_child(cfg, data.model_copy(update={"name": "data"}), run(stop))
    assert stopped.status == "interrupted" and _children() == []
    # the killed runs left the repository sound; verification and retention run in a
    # child process too
    from swarm_maint.backup.verify import verify
    from swarm_maint.schedule.child import in_child

    assert verify(open_job_repo(cfg, data)).ok
    checked = in_child(cfg, "verify", run())
    assert checked.status == "succeeded", checked.summary
    assert checked.details["backup:data"] == {"ok": True, "errors": 0}
    thinned = in_child(cfg, "retention", run())
    assert thinned.status == "succeeded" and thinned.details["data"]["kept"] == 1
    snap = in_child(cfg, "config-snapshot", run())
    assert snap.status == "succeeded", snap.summary
    assert snap.details["paths"] == [str(tmp_path / "etc")]


def test_a_broken_child_is_a_failed_run_with_its_error(tmp_path: Path) -> None:
    import threading

    from swarm_maint.schedule.child import backup_in_child
    from swarm_maint.schedule.job import JobRun

    settings = node_settings(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    settings["backup"]["jobs"] = [{"name": "x", "paths": [str(tmp_path / "data")],
                                   "repo": str(tmp_path / "none"), "password_file": str(pw)}]
    cfg = config_from_dict(settings)
    out = backup_in_child(cfg, cfg.backup.jobs[0],
                          JobRun("backup:x", "schedule", 1, threading.Event()))
    assert out.status == "failed" and "swarm-maint backup init" in out.summary
