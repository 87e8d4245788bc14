"""Every shipped rule fires on the condition it is about, and stays quiet otherwise: each
rule runs alone in the real engine over a MetricHistory fed with frames of series."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric

from swarm_maint.alerts.engine import AlertEngine
from swarm_maint.alerts.rules import humanize_duration, load_default_rules
from swarm_maint.monitoring.history import MetricHistory

Series = Mapping[str, Sequence[tuple[Mapping[str, str], float]]]
T0 = 1_800_000_000.0
GPU = {"gpu": "0", "pci_bus_id": "00000000:17:00.0", "uuid": "GPU-1"}
FS = {"mountpoint": "/data", "device": "/dev/nvme0n1p1", "fstype": "ext4"}


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t


def run(rule_name: str, frame: Callable[[int], Series], seconds: int) -> list[tuple[str, dict[
        str, str], dict[str, str]]]:
    """Feed one frame per second; the (kind, labels, annotations) notified."""
    [rule] = [r for r in load_default_rules() if r.name == rule_name]
    history = MetricHistory(store=None, capacity=seconds + 10, resolution=60, retention=3600)
    clock = Clock()
    engine = AlertEngine([rule], history, clock, external_labels={"node": "n1"})
    out = []
    for i in range(seconds):
        clock.t = T0 + i
        fams: list[Metric] = []
        for name, rows in frame(i).items():
            keys = sorted({k for labels, _ in rows for k in labels})
            fam = GaugeMetricFamily(name, "x", labels=keys)
            for labels, v in rows:
                fam.add_metric([labels.get(k, "") for k in keys], v)
            fams.append(fam)
        history.record(clock.t, fams)
        assert rule.last_error is None, rule.last_error
        for ch in engine.evaluate():
            out.append((ch.kind, ch.alert.labels, ch.alert.annotations))
    return out


def firing(events: list[tuple[str, dict[str, str], dict[str, str]]]) -> list[dict[str, str]]:
    return [labels for kind, labels, _ in events if kind == "firing"]


def xid(code: str, from_s: int) -> Callable[[int], Series]:
    base = {"swarm_gpu_xid_errors_total": [({**GPU, "code": "13"}, 2.0)]}

    def f(i: int) -> Series:
        if i < from_s:
            return base
        return {"swarm_gpu_xid_errors_total": [({**GPU, "code": "13"}, 2.0),
                                               ({**GPU, "code": code}, 1.0)]}
    return f


CASES: list[tuple[str, Callable[[int], Series], int, Callable[[int], Series]]] = [
    # rule, a frame that makes it fire, seconds needed, a frame that must not
    ("Watchdog", lambda i: {}, 1, lambda i: {}),
    ("GpuXidNeedsResetOrReboot", xid("79", 10), 12, xid("13", 10)),
    ("GpuUncorrectableEcc",
     lambda i: {"swarm_gpu_ecc_errors_total": [
         ({**GPU, "error_type": "uncorrected", "counter": "volatile"}, 0.0 if i < 5 else 1.0)]},
     6,
     lambda i: {"swarm_gpu_ecc_errors_total": [
         ({**GPU, "error_type": "corrected", "counter": "volatile"}, float(i))]}),
    ("GpuRowRemapPending", lambda i: {"swarm_gpu_remapped_rows_pending": [(GPU, 1.0)]}, 1,
     lambda i: {"swarm_gpu_remapped_rows_pending": [(GPU, 0.0)]}),
    ("GpuRowRemapFailed", lambda i: {"swarm_gpu_remapped_rows_failed": [(GPU, 1.0)]}, 1,
     lambda i: {"swarm_gpu_remapped_rows_failed": [(GPU, 0.0)]}),
    ("GpuLost", lambda i: {"swarm_gpu_lost": [(GPU, 1.0)]}, 1,
     lambda i: {"swarm_gpu_lost": [(GPU, 0.0)]}),
    ("GpuCountBelowExpected",
     lambda i: {"swarm_health_status": [({"check": "gpu_count", "action": "reboot"}, 2.0)]}, 1,
     lambda i: {"swarm_health_status": [({"check": "gpu_count", "action": ""}, 1.0)]}),
    ("GpuThermalThrottle",
     lambda i: {"swarm_gpu_clock_event_active": [({**GPU, "reason": "hw_thermal_slowdown"},
                                                  1.0)]}, 62,
     lambda i: {"swarm_gpu_clock_event_active": [({**GPU, "reason": "sw_power_cap"}, 1.0)]}),
    ("DiskAlmostFull",
     lambda i: {"swarm_filesystem_avail_bytes": [(FS, 5.0)],
                "swarm_filesystem_size_bytes": [(FS, 100.0)]}, 302,
     lambda i: {"swarm_filesystem_avail_bytes": [(FS, 50.0)],
                "swarm_filesystem_size_bytes": [(FS, 100.0)]}),
    ("MemoryPressure",
     lambda i: {"swarm_memory_used_ratio": [({}, 0.97)]}, 122,
     lambda i: {"swarm_memory_used_ratio": [({}, 0.5)],
                "swarm_pressure_some_avg10_ratio": [({"resource": "memory"}, 0.1)]}),
    ("HealthCheckCritical",
     lambda i: {"swarm_health_status": [({"check": "clock", "action": "fix ntp"}, 2.0)]}, 1,
     lambda i: {"swarm_health_status": [({"check": "gpu_count", "action": "x"}, 2.0),
                                        ({"check": "clock", "action": ""}, 1.0)]}),
    ("BackupFailed", lambda i: {"swarm_backup_last_run_success": [({"job": "models"}, 0.0)]},
     1, lambda i: {"swarm_backup_last_run_success": [({"job": "models"}, 1.0)]}),
    ("BackupTooOld",
     lambda i: {"swarm_backup_last_success_timestamp_seconds": [({"job": "models"},
                                                                 T0 - 2 * 86400)],
                "swarm_backup_max_age_seconds": [({"job": "models"}, 129600.0)]}, 1,
     lambda i: {"swarm_backup_last_success_timestamp_seconds": [({"job": "models"},
                                                                 T0 - 3600)],
                "swarm_backup_max_age_seconds": [({"job": "models"}, 129600.0)]}),
    ("MaintenanceJobFailed",
     lambda i: {"swarm_job_last_run_success": [({"job": "health", "kind": "health"}, 0.0)]},
     1, lambda i: {"swarm_job_last_run_success": [
         ({"job": "health", "kind": "health"}, 1.0),
         ({"job": "backup:models", "kind": "backup"}, 0.0)]}),  # BackupFailed's, not ours
    ("MaintenanceJobMissed",
     lambda i: {"swarm_job_missed": [({"job": "system-updates", "kind": "updates"}, 1.0)]},
     1, lambda i: {"swarm_job_missed": [({"job": "system-updates", "kind": "updates"}, 0.0)]}),
    ("SecurityPatchesPending",
     lambda i: {"swarm_update_security_pending_age_seconds": [({}, 2 * 86400.0)]}, 1,
     lambda i: {"swarm_update_security_pending_age_seconds": [({}, 3600.0)]}),
    ("UpdateFailed", lambda i: {"swarm_update_last_run_success": [({}, 0.0)]}, 1,
     lambda i: {"swarm_update_last_run_success": [({}, 1.0)]}),
]


def test_every_default_rule_has_a_case() -> None:
    assert {c[0] for c in CASES} == {r.name for r in load_default_rules()}


@pytest.mark.parametrize(("name", "fire", "seconds", "quiet"), CASES, ids=[c[0] for c in CASES])
def test_default_rule_fires_on_its_condition_only(
    name: str, fire: Callable[[int], Series], seconds: int, quiet: Callable[[int], Series],
) -> None:
    events = run(name, fire, seconds)
    fired = firing(events)
    assert fired, f"{name} did not fire"
    assert all(lb["alertname"] == name and lb["node"] == "n1" for lb in fired)
    for _, _, ann in events:
        assert "<no value>" not in ann["summary"], ann
    if seconds > 1:  # rules with `for` (or a window) must not fire early
        assert firing(run(name, fire, seconds - 2)) == [], f"{name} fired too early"
    if name != "Watchdog":
        assert firing(run(name, quiet, seconds)) == [], f"{name} fired on a quiet node"


def test_xid_annotation_names_the_gpu_and_code() -> None:
    [(_, labels, ann)] = run("GpuXidNeedsResetOrReboot", xid("79", 10), 12)
    assert labels["code"] == "79"
    assert ann["summary"] == "GPU 00000000:17:00.0 reported XID 79"


def test_humanize_duration() -> None:
    assert humanize_duration(42.5) == "42.5s"
    assert humanize_duration(3725) == "1h 2m 5s"
    assert humanize_duration(2 * 86400 + 61) == "2d 0h 1m 1s"
    _, _, ann = run("BackupTooOld", CASES[12][1], 1)[0]
    assert "is 2d 0h 0m 0s old" in ann["description"]
