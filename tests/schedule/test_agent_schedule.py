"""End to end: a real agent runs its schedule by itself, survives a kill -9 in the middle
of a backup, and recovers and records the cut-off run after a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import tomli_w

from tests.agent_proc import start_agent
from tests.schedule.conftest import node_settings

pytestmark = pytest.mark.slow

EVERY_10S = "* * * * * */10"  # croniter's sixth field: seconds


def jobs(url: str) -> dict[str, dict[str, Any]]:
    return {j["name"]: j for j in httpx.get(f"{url}/api/v1/jobs", timeout=5).json()["jobs"]}


def history(url: str, job: str | None = None) -> list[dict[str, Any]]:
    q = f"?job={job}" if job else ""
    return list(httpx.get(f"{url}/api/v1/jobs/history{q}", timeout=5).json()["runs"])


def wait_for(what: str, cond: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_agent_runs_the_schedule_and_recovers_a_killed_backup(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, schedule={"jobs": {
        "backup:data": {"schedule": EVERY_10S},
        "health": {"schedule": EVERY_10S},
        "config-snapshot": {"schedule": EVERY_10S},
        "backup-verify": {"enabled": False},
        "backup-retention": {"enabled": False},
        "diagnostics": {"enabled": False}}})
    config = tmp_path / "swarm-maint.toml"
    config.write_text(tomli_w.dumps(settings))
    agent = start_agent(tmp_path, "--config", str(config))
    try:
        # backup, health and config snapshot each run by themselves on their schedule
        for name in ("backup:data", "health", "config-snapshot"):
            wait_for(f"a scheduled {name} run", lambda n=name: [
                r for r in history(agent.url, n)
                if r["trigger"] == "schedule" and r["status"] == "succeeded"])
        # a big file makes the next scheduled backup long enough to kill it mid-way
        big = tmp_path / "big.bin"
        with big.open("wb") as f:
            for _ in range(16):
                f.write(os.urandom(50 << 20))
        big.rename(tmp_path / "data" / "big.bin")
        moved = time.time()
        running = wait_for("the backup of the big file to start", lambda: [
            r for r in history(agent.url, "backup:data")
            if r["status"] == "running" and r["started"] > moved])
        time.sleep(1.0)
        assert jobs(agent.url)["backup:data"]["state"] == "running"
        # the backup runs in a child process of the agent, which dies with it
        child = [p for p in psutil.Process(agent.proc.pid).children()
                 if "swarm_maint.schedule.child" in " ".join(p.cmdline())]
        assert len(child) == 1
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(timeout=10)
        psutil.wait_procs(child, timeout=10)
        assert not child[0].is_running(), "the backup child outlived the killed agent"
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
        agent.proc.communicate(timeout=10)
    cut_id = running[0]["id"]

    again = start_agent(tmp_path, "--config", str(config))
    try:
        runs = wait_for("the recovered backup", lambda: [
            r for r in history(again.url, "backup:data")
            if r["trigger"] == "recovery" and r["status"] == "succeeded"])
        rec = runs[0]
        cut = next(r for r in history(again.url, "backup:data") if r["id"] == cut_id)
        assert cut["status"] == "interrupted" and cut["ended"] is not None
        assert "cut off while running" in cut["summary"]
        assert rec["slot"] == cut["slot"]  # the same slot, run again once
        assert rec["details"]["files"] == 3 and rec["details"]["bytes"] > 800 << 20
        interrupted = ('swarm_job_runs_total{job="backup:data",kind="backup",'
                       'status="interrupted"} 1.0')
        metrics = wait_for("the interrupted run in the metrics", lambda: (
            m if interrupted in (m := httpx.get(f"{again.url}/metrics", timeout=5).text)
            else None), timeout=15)  # the frame is collected each second
        assert 'swarm_backup_last_run_success{job="data"} 1.0' in metrics
        status = httpx.get(f"{again.url}/api/v1/status", timeout=5).json()
        assert {j["name"] for j in status["jobs"]} >= {"backup:data", "health"}
        human = subprocess.run([sys.executable, "-m", "swarm_maint.cli.main", "status",
                                "--url", again.url], capture_output=True, text=True,
                               timeout=60, env={**os.environ, "COLUMNS": "200"})
        assert human.returncode == 0, human.stderr
        assert "maintenance jobs" in human.stdout and "backup:data" in human.stdout
        # run-now through the API needs the token
        assert httpx.post(f"{again.url}/api/v1/jobs/health/run", timeout=5).status_code == 401
        token = (tmp_path / "state" / "api-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{again.url}/api/v1/jobs/nope/run", headers=auth,
                          timeout=5).status_code == 404
        ok = httpx.post(f"{again.url}/api/v1/jobs/health/run", headers=auth, timeout=5)
        assert ok.status_code == 202 and ok.json() == {"queued": "health"}
        wait_for("the health run asked for", lambda: [
            r for r in history(again.url, "health") if r["trigger"] == "api"
            and r["status"] == "succeeded"], timeout=30)
    finally:
        again.proc.send_signal(signal.SIGTERM)
        _, err = again.proc.communicate(timeout=20)
    assert again.proc.returncode == 0, err
    # the repository the killed backup was writing to is sound, data and all
    env = {**os.environ, "SWARM_MAINT_PASSWORD":
           (tmp_path / "state" / "backups" / "data.pass").read_text().splitlines()[0]}
    verify = subprocess.run([sys.executable, "-m", "swarm_maint.cli.main", "backup", "verify",
                             "--repo", str(tmp_path / "state" / "backups" / "data"),
                             "--read-data", "--json"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr
    assert json.loads(verify.stdout)["ok"] is True
