"""docs/metrics.md lists every family the code can export, and nothing else."""

from __future__ import annotations

import re
import time
from pathlib import Path

from swarm_maint.config import MonitoringConfig
from swarm_maint.monitoring.build import build_collectors
from swarm_maint.monitoring.collector import CollectorContext
from swarm_maint.monitoring.collectors.gpu import CLOCK_EVENT_REASONS
from swarm_maint.monitoring.hub import MetricsHub
from tests.fake_nvml import FakeNvmlState

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "metrics.md").read_text()
DOCUMENTED = set(re.findall(r"^\| `(swarm_[a-z0-9_]+)` \|", DOC, re.M))
NAME = re.compile(r"""["'](swarm_[a-z0-9_]+)["']""")


def names_in_source() -> set[str]:
    found: set[str] = set()
    for sub in ("monitoring", "health", "updates"):
        for path in (ROOT / "src" / "swarm_maint" / sub).rglob("*.py"):
            found |= set(NAME.findall(path.read_text()))
    return found


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
