"""docs/metrics.md lists every family the code can export, and nothing else."""

from __future__ import annotations

import re
import time
from datetime import UTC
from pathlib import Path

from swarm_maint.config import MonitoringConfig
from swarm_maint.monitoring.build import build_collectors
from swarm_maint.monitoring.collector import CollectorContext
from swarm_maint.monitoring.collectors.gpu import CLOCK_EVENT_REASONS
from swarm_maint.monitoring.hub import MetricsHub
from swarm_maint.schedule.cron import CronSpec
from swarm_maint.schedule.job import Job, JobOutcome
from swarm_maint.schedule.lease import Lease
from swarm_maint.schedule.metrics import ScheduleCollector
from swarm_maint.schedule.scheduler import Scheduler
from swarm_maint.store import Store
from tests.fake_clock import FakeClock
from tests.fake_nvml import FakeNvmlState

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "metrics.md").read_text()
DOCUMENTED = set(re.findall(r"^\| `(swarm_[a-z0-9_]+)` \|", DOC, re.M))
NAME = re.compile(r"""["'](swarm_[a-z0-9_]+)["']""")
# prometheus_client exposes a CounterMetricFamily("x") as x_total
COUNTER = re.compile(r"""CounterMetricFamily\(\s*["'](swarm_[a-z0-9_]+)["']""")
SOURCE_DIRS = ("monitoring", "health", "updates", "schedule")


def names_in_text(text: str) -> set[str]:
    names = set(NAME.findall(text))
    for counter in COUNTER.findall(text):
        if not counter.endswith("_total"):
            names.discard(counter)
            names.add(f"{counter}_total")
    return names


def names_in_source() -> set[str]:
    found: set[str] = set()
    for sub in SOURCE_DIRS:
        for path in (ROOT / "src" / "swarm_maint" / sub).rglob("*.py"):
            found |= names_in_text(path.read_text())
    return found


def documented_in(heading: str) -> set[str]:
    """The families of the docs/metrics.md section whose title starts with ``heading``."""
    for part in DOC.split("\n## ")[1:]:
        if part.startswith(heading):
            return set(re.findall(r"^\| `(swarm_[a-z0-9_]+)` \|", part, re.M))
    raise AssertionError(f"docs/metrics.md has no section {heading!r}")


def test_counter_families_are_read_with_their_total_suffix() -> None:
    text = 'CounterMetricFamily(\n    "swarm_a", "A.")\nCounterMetricFamily("swarm_b_total", "B.")'
    assert names_in_text(text) == {"swarm_a_total", "swarm_b_total"}


def test_every_family_in_the_source_is_documented() -> None:
    in_source = names_in_source()
    assert len(in_source) > 80
    assert in_source - DOCUMENTED == set()
    assert DOCUMENTED - in_source == set(), "documented families the code never exports"


def test_every_family_exported_live_is_documented(fake_nvml: tuple[Path, FakeNvmlState]) -> None:
    library, state = fake_nvml
    state.write([{"name": "NVIDIA H100"}, {"name": "NVIDIA H100"}])
    cfg = MonitoringConfig(nvml_library=str(library))
    collectors = build_collectors(CollectorContext(config=cfg))
    hub = MetricsHub(collectors, 1.0, "n")
    try:
        hub.collect_once()
        time.sleep(0.05)
        frame = hub.collect_once()
    finally:
        hub.close()
    exported = {s.name for fam in frame.families for s in fam.samples}
    assert "swarm_gpu_utilization_ratio" in exported
    assert exported - DOCUMENTED == set()


def test_clock_event_reasons_are_documented() -> None:
    for reason, _bit in CLOCK_EVENT_REASONS:
        assert f"`{reason}`" in DOC


def test_every_schedule_family_exported_live_is_documented(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    clock = FakeClock()
    backup = Job("backup:data", "backup", "", CronSpec("0 3 * * *", UTC),
                 lambda _run: JobOutcome("succeeded", "ok"), labels={"backup_job": "data"},
                 max_age=86400.0 + 21600.0)
    health = Job("health", "health", "", CronSpec("0 * * * *", UTC),
                 lambda _run: JobOutcome("failed", "broken"), lease=False)
    sched = Scheduler([backup, health], store, clock, inline=True)
    try:
        sched.prepare()
        sched.run_now("backup:data")
        sched.run_now("health")
        assert Lease(store, clock).try_acquire("cli: update apply") is not None
        families = ScheduleCollector(sched).collect()
    finally:
        store.close()
    exported = {s.name for fam in families for s in fam.samples}
    assert {"swarm_job_runs_total", "swarm_maintenance_lease_held",
            "swarm_backup_max_age_seconds"} <= exported
    assert exported - DOCUMENTED == set()
    assert documented_in("Maintenance schedule") | documented_in("Backups") == exported
