"""``[schedule]``: the agent's maintenance schedule (docs/schedule.md)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ..defaults import LEASE_TTL
from .base import Duration, _Section

__all__ = ["BUILTIN_JOBS", "JobOverride", "ScheduleConfig", "WindowConfig", "check_cron_field",
           "check_timezone"]

# the built-in jobs besides one backup:NAME per [[backup.jobs]] (schedule/builtin.py)
BUILTIN_JOBS = ("health", "diagnostics", "config-snapshot", "backup-verify",
                "backup-retention", "security-updates", "system-updates")


def check_cron_field(v: str) -> str:
    from ..schedule.cron import check_cron

    return check_cron(v)


def check_timezone(v: str) -> str:
    from ..schedule.cron import resolve_timezone

    resolve_timezone(v)
    return v


class WindowConfig(_Section):
    start: str = Field(..., description="Cron expression of when the window opens.")
    duration: Duration = Field(..., description="How long it stays open.")

    _start = field_validator("start")(check_cron_field)

    @field_validator("duration")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("a window must last longer than 0s")
        return v


class JobOverride(_Section):
    enabled: bool = Field(True, description="Run the job on its schedule.")
    schedule: str = Field("", description="Cron expression replacing the default.")
    jitter: Duration | None = Field(None, description="Replaces schedule.jitter.")
    retries: int | None = Field(None, ge=0, le=20, description="Replaces schedule.retries.")
    window: bool | None = Field(None, description="Wait for a maintenance window and low "
                                "GPU usage (default: only for disruptive jobs).")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        return check_cron_field(v) if v else v


class ScheduleConfig(_Section):
    enabled: bool = Field(True, description="Run the maintenance jobs on their schedules "
                          "(`swarm-maint jobs list`).")
    timezone: str = Field("", description="Time zone of the cron expressions (IANA name); "
                          "empty means the system's.")
    jitter: Duration = Field(300.0, description="Each run starts up to this much after its "
                             "slot (a stable share per node and job), so a fleet spreads out.")
    start_delay: Duration = Field(30.0, description="Runs caught up or recovered at agent "
                                  "start wait this long first.")
    retries: int = Field(2, ge=0, le=20, description="Attempts after a failed run, for the "
                         "same slot.")
    retry_backoff: Duration = Field(60.0, description="Wait before the first retry; doubles "
                                    "each time.")
    lease_ttl: Duration = Field(LEASE_TTL, description="A maintenance lease not renewed for this "
                                "long (its holder died) is free again.")
    lease_wait: Duration = Field(21600.0, description="A due run that cannot get the lease "
                                 "for this long is recorded as missed.")
    low_usage_threshold: float = Field(0.10, ge=0, le=1, description="Window jobs start only "
                                       "when every GPU is under this utilization …")
    low_usage_for: Duration = Field(900.0, description="… and has been for this long.")
    windows: list[WindowConfig] = Field(
        default_factory=lambda: [WindowConfig(start="0 1 * * *", duration=18000.0)],
        description="Maintenance windows ({start = cron, duration}); window jobs that do "
        "not start inside one are missed. Empty: any time.")
    backup_max_age_margin: Duration = Field(21600.0, description="A backup job's newest good "
                                            "snapshot may be its schedule's period plus this "
                                            "old before BackupTooOld fires.")
    jobs: dict[str, JobOverride] = Field(default_factory=dict, description="Per-job "
                                         "overrides, by job name (docs/schedule.md).")

    _tz = field_validator("timezone")(check_timezone)
