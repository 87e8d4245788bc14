"""`swarm-maint jobs list|history|run` as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CLI = [sys.executable, "-m", "swarm_maint.cli.main"]

pytestmark = pytest.mark.slow


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SWARM_MAINT_CONFIG"}
    env["COLUMNS"] = "220"  # wide enough that rich does not fold job names
    return subprocess.run([*CLI, "jobs", *args, "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_list_run_and_history(node: Any) -> None:
    path, _ = node
    listed = cli(path, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = {j["name"]: j for j in json.loads(listed.stdout)}
    assert set(jobs) == {"health", "diagnostics", "config-snapshot", "backup:data",
                         "backup-verify", "backup-retention"}  # updates disabled
    assert jobs["backup:data"]["schedule"] == "0 3 * * *"
    assert jobs["backup:data"]["last_run"] is None and jobs["backup:data"]["next_run"] > 0
    ran = cli(path, "run", "backup:data", "--json")
    assert ran.returncode == 0, ran.stderr
    rec = json.loads(ran.stdout)
    assert rec["status"] == "succeeded" and rec["trigger"] == "cli" and rec["slot"] is None
    assert rec["details"]["files"] == 2
    table = cli(path, "run", "config-snapshot")
    assert table.returncode == 0 and "config-snapshot: succeeded" in table.stdout
    hist = json.loads(cli(path, "history", "--json").stdout)
    assert [(h["job"], h["status"]) for h in hist] == [
        ("config-snapshot", "succeeded"), ("backup:data", "succeeded")]
    assert all(h["ended"] >= h["started"] and h["duration"] >= 0 for h in hist)
    only = json.loads(cli(path, "history", "backup:data", "--json").stdout)
    assert [h["id"] for h in only] == [rec["id"]]
    human = cli(path, "list")
    assert human.returncode == 0 and "backup:data" in human.stdout
    assert "succeeded" in human.stdout


def test_bad_names_and_a_failed_job(node: Any, tmp_path: Path) -> None:
    path, _ = node
    unknown = cli(path, "run", "backup:nope")
    assert unknown.returncode == 2
    assert "no job named 'backup:nope'; the jobs are:" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert cli(path, "history", "nope").returncode == 2
    typo = cli(path, "lsit")
    assert typo.returncode == 2 and "No such command 'lsit'" in typo.stderr
    assert "Traceback" not in typo.stderr
    import shutil

    shutil.rmtree(tmp_path / "data")
    failed = cli(path, "run", "backup:data", "--json")
    assert failed.returncode == 1
    assert "nothing to back up" in json.loads(failed.stdout)["summary"]


def test_run_refuses_while_another_process_holds_the_lease(node: Any, tmp_path: Path) -> None:
    path, _ = node
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from swarm_maint.store import Store\n"
         "from swarm_maint.clock import SystemClock\n"
         "from swarm_maint.schedule.lease import Lease\n"
         "with Lease(Store(sys.argv[1]), SystemClock()).hold('system-updates'):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(60)\n",
         str(tmp_path / "state" / "state.db")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        busy = cli(path, "run", "backup:data")
        # health takes no lease: it runs beside the holder
        health = cli(path, "run", "health", "--json")
        # an ad-hoc `backup run` takes the lease too, unless told not to
        env = {**os.environ, "SWARM_MAINT_PASSWORD": "pw"}
        env.pop("SWARM_MAINT_CONFIG", None)
        repo = str(tmp_path / "adhoc")

        def backup(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*CLI, "backup", *args, "--config", str(path)], env=env,
                                  capture_output=True, text=True, timeout=120)

        assert backup("init", "--repo", repo).returncode == 0
        adhoc_busy = backup("run", "--repo", repo, str(tmp_path / "data"))
        adhoc_free = backup("run", "--repo", repo, "--no-lease", str(tmp_path / "data"))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    assert busy.returncode == 31
    assert "maintenance lease is held by system-updates (pid " in busy.stderr
    assert adhoc_busy.returncode == 31, adhoc_busy.stderr
    assert adhoc_free.returncode == 0, adhoc_free.stderr
    assert health.returncode == 0, health.stderr
    assert cli(path, "run", "backup:data").returncode == 0  # free once the holder died



def test_brackets_in_a_job_summary_are_text_not_markup(tmp_path: Path) -> None:
    """A path like ``x[/]y`` in a failed job's summary once crashed every later
    ``jobs run|list|history`` (Rich read it as a closing tag)."""
    import tomli_w

    from tests.schedule.conftest import node_settings

    settings = node_settings(tmp_path)
    missing = str(tmp_path / "x[/]nope")
    settings["backup"]["jobs"] = [{"name": "m", "paths": [missing]}]
    path = tmp_path / "swarm-maint.toml"
    path.write_text(tomli_w.dumps(settings))
    ran = cli(path, "run", "backup:m")
    assert ran.returncode == 1, ran.stderr  # failed: nothing to back up
    assert missing in ran.stdout and "[[backup.jobs]]" in ran.stdout
    for args in (("history",), ("list",)):
        out = cli(path, *args)
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
    assert "x[/]nope" in cli(path, "history").stdout
