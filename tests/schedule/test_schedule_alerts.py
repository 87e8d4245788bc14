"""A failing backup job reaches a person: BackupFailed at once, BackupTooOld when the
newest good backup is older than the schedule allows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.agent_proc import start_agent
from tests.alerts.test_alerts_in_agent import webhook  # noqa: F401  (the fixture)
from tests.schedule.conftest import node_settings

pytestmark = pytest.mark.slow


def test_a_failing_backup_job_fires_backup_failed_then_backup_too_old(
        tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]) -> None:  # noqa: F811
    url, received = webhook
    settings = node_settings(
        tmp_path,
        schedule={"backup_max_age_margin": "0s", "jobs": {
            "backup:data": {"schedule": "* * * * * */10", "retries": 0},
            **{name: {"enabled": False} for name in (
                "health", "diagnostics", "config-snapshot", "backup-verify",
                "backup-retention")}}},
        alerts={"receivers": [{"name": "ops", "type": "webhook", "url": url}]})
    settings["backup"]["jobs"] = [{"name": "data", "paths": [str(tmp_path / "gone")]}]
    config = tmp_path / "swarm-maint.toml"
    config.write_text(tomli_w.dumps(settings))
    agent = start_agent(tmp_path, "--config", str(config))
    try:
        deadline = time.monotonic() + 60
        firing: dict[str, dict[str, Any]] = {}
        wanted = {"BackupFailed", "BackupTooOld"}
        while time.monotonic() < deadline and not wanted <= set(firing):
            for body in list(received):
                for a in body["alerts"]:
                    if a["status"] == "firing":
                        firing.setdefault(a["labels"]["alertname"], a)
            time.sleep(0.2)
    finally:
        agent.proc.terminate()
        agent.proc.communicate(timeout=20)
    assert set(firing) >= {"BackupFailed", "BackupTooOld"}, received
    assert firing["BackupFailed"]["labels"]["job"] == "data"
    assert firing["BackupFailed"]["labels"]["severity"] == "warning"
    assert firing["BackupTooOld"]["labels"]["severity"] == "critical"
    assert "MaintenanceJobFailed" not in firing  # a backup's failure is BackupFailed's
